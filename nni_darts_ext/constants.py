"""Named constants of the DARTS protocol, each with its source.

Everything that would otherwise be a magic number in the package lives here.
"""

from __future__ import annotations

__all__ = [
    "CIFAR10_MEAN",
    "DARTS_RETRAIN_BATCH_SIZE",
    "DARTS_SEARCH_BATCH_SIZE",
    "CIFAR10_STD",
    "NUM_CLASSES",
    "PRIMITIVES",
    "CELL_TYPES",
    "NODES_PER_CELL",
    "INPUTS_PER_NODE",
    "FIRST_NODE",
    "DEFAULT_CUTOUT_LENGTH",
    "SEARCH_TRAIN_FRACTION",
    "GRADIENT_CLIP_VAL",
    "ARC_LEARNING_RATE",
    "ARC_BETAS",
    "ARC_WEIGHT_DECAY",
    "AUXILIARY_LOSS_WEIGHT",
    "HESSIAN_EPS",
    "DARTS_WIDTH",
    "DARTS_NUM_CELLS",
    "MIN_NUM_CELLS",
    "NATIVE_IMAGE_SIZE",
    "AUX_HEAD_POOLED_SIZE",
    "MAX_ARCH_FILE_BYTES",
    "HESSIAN_POWER_ITERATIONS",
    "HESSIAN_POWER_TOL",
    "DARTS_ES_WINDOW",
    "DARTS_ES_DELTA",
    "DARTS_ES_FACTOR",
    "DARTS_ES_START_EPOCH",
    "MAX_NORMAL_SKIP_CONNECTS",
    "ARCH_STALL_EPOCHS",
    "CIFAR10_IMAGE_SIZE",
    "CIFAR10_PADDING",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "DIGITS_NATIVE_SIZE",
    "DIGITS_TEST_FRACTION",
    "DIGITS_IMAGE_SIZE",
    "PC_PARTIAL_CHANNELS",
    "PC_BYPASS_POOL_SIZE",
    "PT_TUNE_EPOCHS",
    "PT_TUNE_LR_DIVISOR",
    "PC_ARC_LEARNING_RATE",
    "ARC_INIT_SCALE",
    "SELECTION_EPOCHS",
    "SELECTION_HELD_OUT_FRACTION",
    "SIGNIFICANCE_LEVEL",
    "COMPARE_RANDOM_CELLS",
    "COMPARE_RETRAIN_SEEDS",
    "STATISTICAL_POWER",
    "STEM_REDUCTIONS",
    "LAST_STAGE_MIN_MAP",
    "IMAGENET_STEM_MIN_SIZE",
    "CROP_PADDING_DIVISOR",
    "CUTOUT_FRACTION",
    "STATISTICS_SAMPLE",
    "MEMORY_CACHE_BYTES",
    "IMAGEFOLDER_TEST_FRACTION",
    "NATIVE_DATASET_SIZE",
]

# Per-channel statistics of the CIFAR-10 training set, as in quark0/darts cnn/utils.py _data_transforms_cifar10.
CIFAR10_MEAN: tuple[float, float, float] = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD: tuple[float, float, float] = (0.24703233, 0.24348505, 0.26158768)

# NNI's DARTS space is fixed to 10 classes for dataset='cifar' (nasnet.py NDS.num_labels).
NUM_CLASSES = 10

# The seven candidate operations of NNI's DARTS space (nasnet.py DARTS.DARTS_OPS); the paper's `none`
# is handled inside NNI's differentiable cell and never appears in an exported architecture.
PRIMITIVES: tuple[str, ...] = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

# Cell labels used by NNI's DARTS space (nasnet.py CellBuilder).
CELL_TYPES: tuple[str, ...] = ("normal", "reduce")
# Four intermediate nodes per cell, numbered 2..5 (inputs 0, 1 are the two previous cells).
NODES_PER_CELL = 4
FIRST_NODE = 2
INPUTS_PER_NODE = 2

# Cutout length 16 for CIFAR-10 (DeVries & Taylor 2017; quark0/darts cnn/train.py --cutout_length).
DEFAULT_CUTOUT_LENGTH = 16
# DARTS search splits the CIFAR-10 training set in halves (quark0/darts cnn/train_search.py --train_portion 0.5).
SEARCH_TRAIN_FRACTION = 0.5
# Weight-gradient clipping norm (quark0/darts cnn/train_search.py and train.py --grad_clip 5).
GRADIENT_CLIP_VAL = 5.0
# Architecture optimizer: Adam lr 3e-4, betas (0.5, 0.999), weight decay 1e-3
# (quark0/darts cnn/architect.py; NNI differentiable.py configure_architecture_optimizers).
ARC_LEARNING_RATE = 3e-4
ARC_BETAS: tuple[float, float] = (0.5, 0.999)
ARC_WEIGHT_DECAY = 1e-3
# Auxiliary-head loss weight (quark0/darts cnn/train.py --auxiliary_weight 0.4).
AUXILIARY_LOSS_WEIGHT = 0.4
# Second-order DARTS: finite-difference step eps = 0.01 / ||grad_w' L_val(w', alpha)|| (DARTS paper, Sec. 2.3
# after eq. 8; quark0/darts cnn/architect.py _hessian_vector_product(r=1e-2)).
HESSIAN_EPS = 0.01

# Evaluation network of the DARTS paper: 36 initial channels, 20 cells (quark0/darts cnn/train.py --init_channels 36
# --layers 20; NNI nasnet.py DARTS.load_searched_model('darts-v2') uses width=36, num_cells=20).
DARTS_WIDTH = 36
DARTS_NUM_CELLS = 20
# NNI's NDS splits num_cells over 3 stages ((i + 1) * n // 3 - i * n // 3 cells each, nasnet.py NDS.__init__);
# with fewer than 3 cells a stage is empty and construction fails (IndexError), so 3 is the minimum.
MIN_NUM_CELLS = 3
# Input sizes NNI's AuxiliaryHead is written for (nasnet.py AuxiliaryHead: AvgPool2d(5, stride=3) on the 8x8 map
# of a 32x32 CIFAR image; stride=2 on the 7x7 map of a 224x224 ImageNet image).
NATIVE_IMAGE_SIZE: dict[str, int] = {"cifar": 32, "imagenet": 224}
# Spatial size of the auxiliary head's pooled map at native size (its next conv has kernel 2, nasnet.py).
AUX_HEAD_POOLED_SIZE = 2
# Stride-2 steps of the DARTS net per stem (NNI nasnet.py NDS.__init__): the cifar stem keeps the resolution and
# the cells reduce twice; the imagenet stem halves three times (stem0: two stride-2 convs, stem1: one), then the
# cells' two reductions.
STEM_REDUCTIONS: dict[str, int] = {"cifar": 2, "imagenet": 5}
# The smallest map side the last stage may work on (ours): 2x2, the map NNI's auxiliary head convolves with its
# 2x2 kernel (nasnet.py AuxiliaryHead), so an input must be at least 2 * 2 ** STEM_REDUCTIONS[stem] px (8 / 64).
LAST_STAGE_MIN_MAP = 2
# Images of this side and more get the imagenet stem unless a recipe says otherwise (ours: the smallest size at
# which the imagenet stem leaves a LAST_STAGE_MIN_MAP map, 2 * 2 ** 5).
IMAGENET_STEM_MIN_SIZE = 64
# An arch file (32 keys of JSON, or one Genotype(...) line) is a few KiB; refuse anything above 1 MiB unread.
MAX_ARCH_FILE_BYTES = 1 << 20

# CIFAR-10 images are 32x32 RGB; DARTS crops them randomly after 4 pixels of zero padding
# (quark0/darts cnn/utils.py _data_transforms_cifar10: RandomCrop(32, padding=4)).
CIFAR10_IMAGE_SIZE = 32
CIFAR10_PADDING = 4
# The DARTS random crop pads CIFAR-10's 32 px by 4 (quark0/darts cnn/utils.py): image_size // 8 for any size.
CROP_PADDING_DIVISOR = 8
# DARTS' Cutout is 16 px on 32 px CIFAR-10 (quark0/darts cnn/train.py --cutout_length 16): half the side.
CUTOUT_FRACTION = 0.5
# Mean / std of an own dataset: from at most this many training images, a seeded sample (ours: bounds the time
# spent on statistics of a large folder).
STATISTICS_SAMPLE = 10_000
# dataset.cache: auto keeps decoded images in memory when they take at most this many bytes (ours: 2 GiB).
MEMORY_CACHE_BYTES = 2 * 1024**3
# Native sizes of the torchvision datasets read from local files (torchvision docs: CIFAR-100 and SVHN 32x32 RGB,
# MNIST and Fashion-MNIST 28x28 grayscale), and CIFAR-10's.
NATIVE_DATASET_SIZE: dict[str, int] = {"cifar10": 32, "cifar100": 32, "svhn": 32, "mnist": 28, "fashion-mnist": 28}
# imagefolder without a test/ folder: the held-out test fraction (ours: as DIGITS_TEST_FRACTION).
IMAGEFOLDER_TEST_FRACTION = 0.2
# scikit-learn's load_digits: 1797 grey 8x8 images with pixel values 0..16.
DIGITS_NATIVE_SIZE = 8
# Our fixed stratified split of digits: 20% test (train_test_split(test_size=0.2, stratify=y, random_state=0)).
DIGITS_TEST_FRACTION = 0.2
# Mean / std of the digits train split (seed 0, 1437 images), pixel values scaled to [0, 1], computed once at
# the native 8x8 size (like CIFAR-10's at 32x32) with torch.float64 (unbiased std). Bilinear upsampling keeps
# the mean exactly but smooths: at 16x16 the normalised pixels have std ~0.85 (raw std 0.3190), at 32x32 ~0.86.
DIGITS_MEAN = 0.30538339
DIGITS_STD = 0.37612121
# Default digits input size for get_dataset (upsampled from 8x8): 16x16 searched and retrained faster than 32x32
# at the same accuracy on CPU. The demo recipe uses the digits' own 8x8, faster still.
DIGITS_IMAGE_SIZE = 16

# PC-DARTS (Xu et al., ICLR 2020; github:yuhuixu1993/PC-DARTS). Partial-channel factor K: 1/K of each edge's input
# channels go through the candidate ops (model_search.py MixedOp: k = 4).
PC_PARTIAL_CHANNELS = 4
# The bypassed channels of a stride-2 (reduction) edge are max-pooled with kernel 2, stride 2
# (MixedOp: nn.MaxPool2d(2, 2)).
PC_BYPASS_POOL_SIZE = 2
# PC-DARTS architecture learning rate (train_search.py --arch_learning_rate 6e-4; weight decay as DARTS, 1e-3).
PC_ARC_LEARNING_RATE = 6e-4
# Architecture parameters start as 1e-3 * N(0, 1) (quark0/darts model_search.py _initialize_alphas; NNI
# differentiable.py DifferentiableMixedCell; PC-DARTS model_search.py, alphas and betas alike).
ARC_INIT_SCALE = 1e-3

# ---------------------------------------------------------------------------------------------------------------
# Robust DARTS variants (nni_darts_ext/search/: mixing, regularizers, perturbation, schedules, progressive).
# Each number cites the official repository file it was read from; docs/variants.md lists what is unconfirmed.
# ---------------------------------------------------------------------------------------------------------------
# DrNAS (Chen et al., ICLR 2021; github:xiangning-chen/DrNAS). Dirichlet concentration = elu(alpha) + 1
# (utils.py process_step_vector, DARTS-space/model_search.py _get_kl_reg); the prior (anchor) is Dirichlet(1).
DRNAS_CONCENTRATION_SHIFT = 1.0
DRNAS_PRIOR_CONCENTRATION = 1.0
# Regulariser towards the prior: DARTS-space/train_search.py --reg_type l2 (default; an Adam weight decay of
# reg_scale on alpha, architect.py) or kl (model_search.py _get_kl_reg), --reg_scale 1e-3.
DRNAS_REG_TYPE = "l2"
DRNAS_REG_SCALE = 1e-3
# Architecture optimiser: Adam, lr 6e-4, betas (0.5, 0.999) (train_search.py --arch_learning_rate; architect.py).
DRNAS_ARC_LEARNING_RATE = 6e-4
DRNAS_ARC_BETAS = (0.5, 0.999)

# beta-DARTS (Ye et al., CVPR 2022; github:Sunshine-Ye/Beta-DARTS). Loss = mean over edges of logsumexp(alpha)
# (optimizers/darts/architect.py mlc_loss), weighted by 50 * epoch / 100 (architect.py _backward_step).
BETA_DARTS_WEIGHT_MAX = 50.0
BETA_DARTS_WEIGHT_HORIZON = 100
# Search settings (sota/cnn/train_search.py): arch Adam lr 3e-4 with weight decay 1e-3.
BETA_DARTS_ARC_LEARNING_RATE = 3e-4
BETA_DARTS_ARC_WEIGHT_DECAY = 1e-3

# DARTS- (Chu et al., ICLR 2021; github:Meituan-AutoML/DARTS-). Auxiliary skip weight beta decays linearly from
# --skip_beta 1 (scripts/run_darts_minus.sh) as beta * (T_max - epoch) / (T_max - T_start) (src/utils.py
# DecayScheduler), T_start 0, T_stop = T_max = 50 = --epochs (src/search/args.py).
DARTS_MINUS_SKIP_BETA = 1.0
DARTS_MINUS_DECAY = "linear"
DARTS_MINUS_DECAY_START_EPOCH = 0

# SDARTS (Chen & Hsieh, ICML 2020; github:xiangning-chen/SmoothDARTS). The softmax-normalised weights are
# perturbed during the weight step (sota/cnn/train_search.py train: softmax_arch_parameters, perturb, forward
# with updateType='weight'). Epsilon ramps linearly 0.03 -> --epsilon_alpha 0.3 over the epochs (train_search.py
# main: 0.03 + (eps - 0.03) * epoch / epochs). PGD (attacker/perturb.py Linf_PGD_alpha): 7 steps, step size
# 2 * eps / steps (signed gradient, attacker/linf_sgd.py), random uniform start, kept only if it raised the loss.
SDARTS_EPSILON_MIN = 0.03
SDARTS_EPSILON_MAX = 0.3
SDARTS_PGD_STEPS = 7
SDARTS_PGD_STEP_SCALE = 2.0

# FairDARTS (Chu et al., ECCV 2020; github:xiaomi-automl/FairDARTS). Zero-one loss -mean((sigmoid(alpha) - 0.5)^2)
# (fairdarts/separate_loss.py ConvSeparateLoss), weight 10 (fairdarts/train_search.py --aux_loss_weight);
# export: threshold_sparse with threshold 0.85 (--parse_method, --op_threshold; utils.py parse).
FAIR_DARTS_ZERO_ONE_CENTER = 0.5
FAIR_DARTS_ZERO_ONE_WEIGHT = 10.0
FAIR_DARTS_THRESHOLD = 0.85
# Search settings (fairdarts/train_search.py): arch Adam lr 3e-3, betas (0.9, 0.999) (--arch_lr_gamma), weight
# decay 1e-3 (the weights' SGD settings are in recipes/fair-darts.yaml).
FAIR_DARTS_ARC_LEARNING_RATE = 3e-3
FAIR_DARTS_ARC_BETAS = (0.9, 0.999)

# GDAS (Dong & Yang, CVPR 2019; github:D-X-Y/AutoDL-Projects). Temperature linear from 10 to 0.1
# (scripts-search/NASNet-space-search-by-GDAS.sh --tau_max 10 --tau_min 0.1), tau = tau_max - (tau_max - tau_min)
# * epoch / (epochs - 1) (exps/NAS-Bench-201-algos/GDAS.py); 250 epochs, batch 256, SGD lr 0.025 -> 0.001 cosine,
# weight decay 5e-4, Nesterov (configs/search-opts/GDAS-NASNet-CIFAR.config); arch Adam lr 3e-4, weight decay 1e-3
# (the .sh); 16 channels, 2 cells per stage (configs/search-archs/GDAS-NASNet-CIFAR.config).
GDAS_TAU_MAX = 10.0
GDAS_TAU_MIN = 0.1
GDAS_ARC_LEARNING_RATE = 3e-4
GDAS_ARC_WEIGHT_DECAY = 1e-3
# Gumbel samples are redrawn while a sample has inf/nan (xautodl/models/cell_searchs/search_model_gdas_nasnet.py);
# we stop after this many draws and raise rather than loop forever.
GDAS_MAX_RESAMPLES = 100

# P-DARTS (Chen et al., ICCV 2019; github:chenxin061/pdarts train_search.py). Three stages of 25 epochs on 5, 11,
# 17 cells (--layers 5, add_layers [0, 6, 12]); ops kept per edge after each stage 5, 3, 1 (num_to_keep, of 8 ops
# with 'none'); 'none' is always dropped at the last pruning (get_min_k_no_zero); no architecture step in a
# stage's first 10 epochs (eps_no_archs); no width increase (add_width 0).
PDARTS_STAGE_CELLS = (5, 11, 17)
PDARTS_STAGE_OPS_KEPT = (5, 3, 1)
PDARTS_STAGE_EPOCHS = 25
PDARTS_WARMUP_EPOCHS = 10
PDARTS_STAGE_WIDTH_INCREASE = (0, 0, 0)
# Skip-connect dropout per stage from README.md's CIFAR-10 command (--dropout_rate 0.1 0.4 0.7; the paper's text
# gives 0.0 for stage 1). In a stage: rate * (epochs - epoch - 1) / epochs during the warm-up, then
# rate * exp(-(epoch - warmup) * 0.2) (train_search.py main, scale_factor).
PDARTS_SKIP_DROPOUT = (0.1, 0.4, 0.7)
PDARTS_DROPOUT_DECAY = 0.2
# At most 2 skip connections in the exported normal cell (paper Sec. 3.3, M = 2; train_search.py check_sk_number /
# delete_min_sk_prob loop).
PDARTS_MAX_SKIP_CONNECTS = 2
# Search settings (train_search.py): arch Adam lr 6e-4, weight decay 1e-3, gradient norm clipped at 5 (train():
# clip_grad_norm_, --grad_clip 5, as GRADIENT_CLIP_VAL); the weights' SGD settings are in recipes/p-darts.yaml.
PDARTS_ARC_LEARNING_RATE = 6e-4

# Search health (RobustDARTS: Zela et al., "Understanding and Robustifying Differentiable Architecture Search",
# ICLR 2020, Sec. 4.3 DARTS-ES; github:automl/RobustDARTS). The official code computes the full Hessian of the
# validation loss w.r.t. the architecture parameters (src/search/analyze.py compute_Hw) and takes its largest
# eigenvalue; we estimate the dominant one by power iteration on Hessian-vector products instead: at most this many
# products (each one double backward through the supernet) ...
HESSIAN_POWER_ITERATIONS = 20
# ... stopping earlier once the Rayleigh quotient changes by less than this relative amount between iterations.
HESSIAN_POWER_TOL = 1e-3
# DARTS-ES rule (src/utils.py EVLocalAvg.early_stop, defaults of src/search/args.py): the eigenvalues are smoothed by
# a centred local average over --window 5 evaluations; the search stops when the latest local average exceeds the
# one --delta 4 evaluations earlier by more than --factor 1.3 (the paper: lambda(i-k) / lambda(i) < 0.75), but only
# once that earlier average's epoch is at least --es_start_epoch 10; the architecture of that earlier epoch is
# returned (EVLocalAvg.stop_epoch = local-average epoch - ev_freq * delta; stop_genotype = genotypes[stop_epoch]).
DARTS_ES_WINDOW = 5
DARTS_ES_DELTA = 4
DARTS_ES_FACTOR = 1.3
DARTS_ES_START_EPOCH = 10
# Warn when the normal cell holds more than 2 skip connections: P-DARTS (Chen et al., ICCV 2019, Sec. 3.3) keeps
# M = 2 of them, DARTS+ (Liang et al. 2019, arXiv:1909.06035, Sec. 3.2) stops once the normal cell has 2 or more.
MAX_NORMAL_SKIP_CONNECTS = 2
# Warn when the exported architecture has not changed for this many epochs: DARTS+ (Sec. 3.2, criterion 2) stops
# once the ranking of the learnable operations is stable for "a determined number of epochs (e.g., 10 epochs)".
ARCH_STALL_EPOCHS = 10

# Choosing among the cells of several search seeds (`search.select: val`). DARTS (Liu et al., ICLR 2019,
# arXiv:1806.09055, Sec. 3.2) runs the search four times with different seeds and keeps the cell with the best
# validation performance after training it from scratch "for a short period (100 epochs on CIFAR-10)".
SELECTION_EPOCHS = 100
# That short retrain is scored on this held-out fraction of the training split (never on the test split); the same
# fraction as a retrain tuned by nnictl (nni_trial.TRIAL_VALIDATION_FRACTION). Our choice: the paper does not say
# how much of the training data it held out.
SELECTION_HELD_OUT_FRACTION = 0.1

# `nni-darts compare`: a difference is called evidence at p below this level, R. A. Fisher's conventional 5%
# ("Statistical Methods for Research Workers", 1925, Sec. 20) ...
SIGNIFICANCE_LEVEL = 0.05
# `compare` without --random / --seeds: a first look, 6 random cells and 2 retrain seeds each. Welch's test gets two
# values of the searched cell (it needs two) against six random cells, and the searched cell ranks first by chance
# 1 time in 7 (14%); 14 retrains with one cell, 16 minutes for the demo recipe on one CPU core (14 x the 68.5 s
# retrain of README, "Performance"). README, "Evidence" says how many seeds a smaller difference needs.
COMPARE_RANDOM_CELLS = 6
COMPARE_RETRAIN_SEEDS = 2
# ... and the seed guide asks for this power (probability of detecting a real difference): J. Cohen, "Statistical
# Power Analysis for the Behavioral Sciences", 2nd ed. 1988, Sec. 2.3.4, proposes 0.80 as the convention.
STATISTICAL_POWER = 0.8

# The batches the DARTS learning rate 0.025 was set for (quark0/darts cnn/train_search.py --batch_size 64,
# cnn/train.py --batch_size 96): the reference of --scale-lr's linear rule when batch_size is auto.
DARTS_SEARCH_BATCH_SIZE = 64
DARTS_RETRAIN_BATCH_SIZE = 96

# Perturbation-based architecture selection, DARTS-PT (Wang et al., "Rethinking Architecture Selection in
# Differentiable NAS", ICLR 2021, Sec. 3.2 and Alg. 1; github:ruocwang/darts-pt). Read from sota/cnn/projection.py
# (pt_project, project_op, project_edge) and sota/cnn/train_search.py / exp_scripts/darts-proj-sota.sh:
# fine-tuning epochs between two decisions: `--proj_intv 5` in the script that reproduces the paper's DARTS-space
# results (exp_scripts/darts-proj-sota.sh; train_search.py's argparse default is 10).
PT_TUNE_EPOCHS = 5
# The fine-tuning restarts the weight optimiser at the search's learning rate / 10 (projection.py:
# `model.reset_optimizer(args.learning_rate / 10, ...)`), cosine-annealed to the search's minimum over the whole
# selection (CosineAnnealingLR(tune_epochs, eta_min=args.learning_rate_min)).
PT_TUNE_LR_DIVISOR = 10.0
# Every node keeps INPUTS_PER_NODE inputs (project_edge: `while len(eids) > 2`); accuracy is the criterion
# (--proj_crit_* acc), measured with BatchNorm on batch statistics (infer(..., _eval=False)).
