"""Defining math of the robust DARTS variants, against hand computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nni_darts_ext import constants as C
from nni_darts_ext.search.mixing import (
    DirichletMixing,
    GumbelHardMixing,
    SigmoidMixing,
    SoftmaxMixing,
    apply_op_mask,
)
from nni_darts_ext.search.perturbation import (
    PGDAlphaPerturbation,
    RandomAlphaPerturbation,
    clip_to_simplex,
)
from nni_darts_ext.search.progressive import (
    PDARTS_CIFAR10_STAGES,
    Stage,
    limit_skip_connects,
    prune_ops,
)
from nni_darts_ext.search.regularizers import (
    BetaRegularizer,
    DirichletPriorRegularizer,
    ZeroOneLoss,
)
from nni_darts_ext.search.schedules import (
    beta_darts_weight,
    darts_minus_skip_weight,
    gdas_tau,
    pdarts_skip_dropout,
    sdarts_epsilon,
)
from nni_darts_ext.search.selection import (
    edge_slices,
    select_by_threshold,
    select_top_inputs,
)

DARTS_OPS = list(C.PRIMITIVES)  # NNI's seven DARTS ops, no 'none'


# ----------------------------------------------------------------------------------------------- mixing basics
@pytest.mark.parametrize(
    "mixing", [SoftmaxMixing(), DirichletMixing(), GumbelHardMixing(), SigmoidMixing()]
)
@pytest.mark.parametrize("shape", [(4,), (3, 4)])
def test_every_mixing_works_on_any_shape_with_ops_last(mixing, shape):
    alpha = nn.Parameter(torch.randn(shape))
    weights = mixing(alpha)
    assert weights.shape == alpha.shape
    assert mixing.probs(alpha).shape == alpha.shape
    (weights * torch.arange(4.0)).sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    if mixing.normalized:
        assert torch.allclose(weights.sum(-1), torch.ones(shape[:-1]), atol=1e-6)


def test_passthrough_returns_alpha_unchanged_and_is_restored():
    mixing = SoftmaxMixing()
    alpha = torch.tensor([0.2, 0.8])
    with mixing.passthrough():
        assert mixing(alpha) is alpha
    assert torch.allclose(mixing(alpha), torch.softmax(alpha, -1))


@pytest.mark.parametrize("mixing", [DirichletMixing(), GumbelHardMixing()])
def test_sample_once_shares_one_sample_per_alpha_within_a_forward(mixing):
    torch.manual_seed(0)
    alpha, other = nn.Parameter(torch.zeros(14, 7)), nn.Parameter(torch.zeros(14, 7))
    with mixing.sample_once():
        first = mixing(alpha)
        assert (
            mixing(alpha) is first
        )  # a second cell of the same type reuses the sample
        assert not torch.equal(mixing(other), first)
    assert not torch.equal(mixing(alpha), first)  # a new forward pass draws again


@pytest.mark.parametrize(
    "mixing", [DirichletMixing(), GumbelHardMixing(), SigmoidMixing()]
)
def test_deterministic_forward_returns_probs(mixing):
    alpha = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    with mixing.deterministic():
        assert torch.equal(mixing(alpha), mixing.probs(alpha))


def test_mixing_rejects_bad_alpha():
    with pytest.raises(TypeError, match="alpha"):
        SoftmaxMixing()([0.1, 0.2])
    with pytest.raises(ValueError, match="alpha"):
        SoftmaxMixing()(torch.tensor(1.0))


# ----------------------------------------------------------------------------------------------------- DrNAS
def test_dirichlet_concentration_is_elu_plus_one():
    alpha = torch.tensor([1.0, 0.0, -1.0])
    assert torch.allclose(
        DirichletMixing.concentration(alpha), torch.tensor([2.0, 1.0, math.exp(-1.0)])
    )


def test_dirichlet_probs_is_the_mean_and_samples_average_to_it():
    alpha = torch.tensor(
        [1.0, 0.0, 0.0]
    )  # concentration (2, 1, 1): mean (1/2, 1/4, 1/4)
    mixing = DirichletMixing()
    assert torch.allclose(mixing.probs(alpha), torch.tensor([0.5, 0.25, 0.25]))
    torch.manual_seed(0)
    samples = mixing(alpha.expand(20000, 3))
    assert (samples > 0).all()
    assert torch.allclose(samples.sum(-1), torch.ones(20000), atol=1e-5)
    # Var of a Dirichlet(2,1,1) component <= 1/20; the std error of the mean of 20000 draws is < 0.002.
    assert torch.allclose(samples.mean(0), torch.tensor([0.5, 0.25, 0.25]), atol=0.01)


def test_dirichlet_sample_is_reparameterised():
    alpha = nn.Parameter(torch.zeros(5))
    torch.manual_seed(1)
    (DirichletMixing()(alpha) * torch.arange(5.0)).sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0


def test_drnas_kl_regulariser_matches_the_closed_form():
    # KL(Dir(2, 1) || Dir(1, 1)) = lgamma(3) - lgamma(2) - lgamma(1) - lgamma(2) + (2 - 1) * (psi(2) - psi(3))
    #                           = log 2 - 1/2
    regulariser = DirichletPriorRegularizer(kind="kl", scale=1.0)
    value = regulariser(
        [torch.tensor([1.0, 0.0]), torch.zeros(3)],
        DirichletMixing(),
        epoch=0,
        max_epochs=1,
    )
    assert value.item() == pytest.approx(math.log(2) - 0.5, abs=1e-6)
    default = DirichletPriorRegularizer(kind="kl")
    assert default(
        [torch.tensor([1.0, 0.0])], DirichletMixing(), epoch=0, max_epochs=1
    ).item() == pytest.approx(1e-3 * (math.log(2) - 0.5), abs=1e-9)


def test_drnas_l2_regulariser_has_the_gradient_of_adam_weight_decay():
    alphas = [
        nn.Parameter(torch.tensor([1.0, 2.0])),
        nn.Parameter(torch.tensor([[3.0]])),
    ]
    regulariser = DirichletPriorRegularizer()  # official default: l2, 1e-3
    assert (regulariser.kind, regulariser.scale) == ("l2", 1e-3)
    value = regulariser(alphas, DirichletMixing(), epoch=0, max_epochs=1)
    assert value.item() == pytest.approx(0.5 * 1e-3 * (1 + 4 + 9))
    value.backward()
    for alpha in alphas:
        assert torch.allclose(alpha.grad, 1e-3 * alpha.detach())


def test_apply_op_mask_renormalises_the_kept_ops():
    weights = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    mask = torch.tensor([[True, False, True], [False, True, True]])
    expected = torch.tensor([[0.2 / 0.7, 0.0, 0.5 / 0.7], [0.0, 0.75, 0.25]])
    assert torch.allclose(apply_op_mask(weights, mask), expected)
    with pytest.raises(ValueError, match="at least one"):
        apply_op_mask(weights, torch.zeros(2, 3, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------ beta-DARTS
def test_beta_loss_is_mean_logsumexp_over_edges_weighted_by_schedule():
    alphas = [
        torch.zeros(2),
        torch.log(torch.tensor([1.0, 3.0])),
    ]  # logsumexp: log 2, log 4
    regulariser = BetaRegularizer()
    assert BetaRegularizer.loss(alphas).item() == pytest.approx(
        (math.log(2) + math.log(4)) / 2
    )
    # official weight 50 * epoch / 100
    value = regulariser(alphas, SoftmaxMixing(), epoch=10, max_epochs=50)
    assert value.item() == pytest.approx(5.0 * (math.log(2) + math.log(4)) / 2)
    assert regulariser(alphas, SoftmaxMixing(), epoch=0, max_epochs=50).item() == 0.0
    # rows of a 2-D alpha are edges too
    stacked = torch.stack(alphas)
    assert BetaRegularizer.loss([stacked]).item() == pytest.approx(
        BetaRegularizer.loss(alphas).item()
    )


def test_beta_loss_gradient_is_softmax_over_edge_count():
    alpha = nn.Parameter(torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]]))
    BetaRegularizer.loss([alpha]).backward()
    assert torch.allclose(alpha.grad, torch.tensor([[0.25, 0.75], [0.5, 0.5]]) / 2)


def test_beta_weight_schedule():
    assert beta_darts_weight(0) == 0.0
    assert beta_darts_weight(49) == pytest.approx(
        24.5
    )  # 50 epochs with the official horizon 100
    assert BetaRegularizer(horizon=None).weight(50, 50) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="epoch"):
        beta_darts_weight(-1)


# ---------------------------------------------------------------------------------------------------- DARTS-
def test_darts_minus_skip_weight_decays_linearly_to_zero():
    weights = [darts_minus_skip_weight(e, max_epochs=50) for e in (0, 25, 49, 50)]
    assert weights == pytest.approx([1.0, 0.5, 0.02, 0.0])
    # decay starting later: flat before, (T - e) / (T - start) after
    assert darts_minus_skip_weight(5, max_epochs=50, start_epoch=10) == 1.0
    assert darts_minus_skip_weight(30, max_epochs=50, start_epoch=10) == pytest.approx(
        0.5
    )
    # frozen after stop_epoch
    assert darts_minus_skip_weight(30, max_epochs=50, stop_epoch=20) == pytest.approx(
        0.6
    )
    assert darts_minus_skip_weight(25, max_epochs=50, decay="cosine") == pytest.approx(
        0.5
    )
    with pytest.raises(ValueError, match="decay"):
        darts_minus_skip_weight(0, max_epochs=50, decay="step")


# ----------------------------------------------------------------------------------------------------- SDARTS
def test_sdarts_epsilon_ramp():
    assert sdarts_epsilon(0, max_epochs=50) == pytest.approx(0.03)
    assert sdarts_epsilon(25, max_epochs=50) == pytest.approx(0.165)
    assert sdarts_epsilon(49, max_epochs=50) == pytest.approx(0.03 + 0.27 * 49 / 50)


def test_clip_to_simplex_by_hand():
    weights = torch.tensor([[0.6, 0.6, -0.2], [-0.1, -0.3, -0.2], [0.2, 0.3, 0.1]])
    clip_to_simplex(weights)
    expected = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 0.5, 1 / 6]])
    assert torch.allclose(weights, expected)


def test_random_perturbation_is_softmax_plus_bounded_uniform_noise_and_restores_bit_exactly():
    torch.manual_seed(3)
    logits = [torch.randn(2, 4), torch.randn(4)]
    alphas = [nn.Parameter(t.clone()) for t in logits]
    eps = sdarts_epsilon(10, max_epochs=50)
    perturbation = RandomAlphaPerturbation(generator=torch.Generator().manual_seed(7))
    perturbation.perturb(alphas, lambda: torch.tensor(0.0), epoch=10, max_epochs=50)
    replay = torch.Generator().manual_seed(7)
    for alpha, logit in zip(alphas, logits, strict=False):
        noise = torch.rand(logit.shape, generator=replay) * 2 * eps - eps
        assert (noise.abs() <= eps).all()
        expected = torch.softmax(logit, -1) + noise
        clip_to_simplex(expected)
        assert torch.allclose(alpha.detach(), expected, atol=1e-6)
        assert ((alpha >= 0) & (alpha <= 1)).all()
        assert torch.allclose(alpha.sum(-1), torch.ones(alpha.shape[:-1]), atol=1e-6)
    perturbation.restore(alphas)
    for alpha, logit in zip(alphas, logits, strict=False):
        assert torch.equal(alpha.detach(), logit)


def _edge_loss(alphas, outputs, target):
    """A two-edge 'network': each edge mixes fixed op outputs with the weights in alphas."""
    prediction = sum((alpha * out).sum() for alpha, out in zip(alphas, outputs, strict=False))
    return (prediction - target) ** 2


def test_pgd_perturbation_reaches_the_ball_edge_that_raises_the_loss():
    # Two ops per edge with outputs of opposite sign: every signed step keeps the row sum at 1, so the attack
    # ends on the eps-ball's edge: w = (1/2 - eps, 1/2 + eps) lowers the prediction 0.75 further below 3.
    alphas = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))]
    outputs = [torch.tensor([1.0, -1.0]), torch.tensor([2.0, -0.5])]
    target = torch.tensor(3.0)
    mixing = SoftmaxMixing()
    pgd = PGDAlphaPerturbation(
        epsilon_min=0.1, epsilon_max=0.1, generator=torch.Generator().manual_seed(0)
    )
    with mixing.passthrough():
        pgd.perturb(
            alphas,
            lambda: _edge_loss([mixing(a) for a in alphas], outputs, target),
            epoch=0,
            max_epochs=1,
        )
        attacked = _edge_loss([mixing(a) for a in alphas], outputs, target).item()
    for alpha in alphas:
        assert torch.allclose(alpha.detach(), torch.tensor([0.4, 0.6]), atol=1e-6)
    clean = (0.75 - 3.0) ** 2
    assert pgd.last_losses == pytest.approx((clean, attacked))
    assert attacked == pytest.approx((0.4 - 0.6 + 0.8 - 0.3 - 3.0) ** 2)
    assert attacked > clean
    pgd.restore(alphas)
    assert all(torch.equal(a.detach(), torch.zeros(2)) for a in alphas)


def test_pgd_perturbation_raises_the_loss_and_stays_on_the_simplex():
    alphas = [
        nn.Parameter(torch.zeros(3)),
        nn.Parameter(torch.tensor([0.5, -0.5, 0.0])),
    ]
    outputs = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, -1.0, 2.0])]
    target = torch.tensor(3.0)
    mixing = SoftmaxMixing()
    clean = _edge_loss([mixing(a) for a in alphas], outputs, target).item()
    pgd = PGDAlphaPerturbation(generator=torch.Generator().manual_seed(0))
    with mixing.passthrough():
        pgd.perturb(
            alphas,
            lambda: _edge_loss([mixing(a) for a in alphas], outputs, target),
            epoch=49,
            max_epochs=50,
        )
        attacked = _edge_loss([mixing(a) for a in alphas], outputs, target).item()
    assert pgd.last_losses[0] == pytest.approx(clean)
    assert attacked > clean
    for alpha in alphas:
        assert ((alpha >= 0) & (alpha <= 1)).all()
        assert alpha.sum().item() == pytest.approx(1.0, abs=1e-6)
    pgd.restore(alphas)


def test_pgd_keeps_the_unperturbed_weights_when_the_attack_lowers_the_loss():
    alpha = nn.Parameter(
        torch.zeros(2)
    )  # softmax (1/2, 1/2) is the maximum of -(w0 - 1/2)^2
    pgd = PGDAlphaPerturbation(
        epsilon_min=0.2, epsilon_max=0.2, generator=torch.Generator().manual_seed(0)
    )
    pgd.perturb([alpha], lambda: -((alpha[0] - 0.5) ** 2), epoch=0, max_epochs=1)
    assert pgd.last_losses[1] < pgd.last_losses[0]
    assert torch.equal(alpha.detach(), torch.tensor([0.5, 0.5]))


def test_pgd_defaults_are_the_official_ones():
    pgd = PGDAlphaPerturbation()
    assert (pgd.steps, pgd.step_scale, pgd.random_start) == (7, 2.0, True)
    assert (pgd.epsilon(0, 50), pgd.epsilon(50, 50)) == pytest.approx((0.03, 0.3))


def test_perturbation_call_order_is_checked():
    perturbation = RandomAlphaPerturbation()
    with pytest.raises(RuntimeError, match="without perturb"):
        perturbation.restore([nn.Parameter(torch.zeros(2))])


# ------------------------------------------------------------------------------------------------- FairDARTS
def test_zero_one_loss_by_hand():
    # sigmoid: 0.5, 0.75 | 0.25 -> squared distances to 0.5: 0, 1/16, 1/16; mean over all three entries
    alphas = [torch.tensor([0.0, math.log(3.0)]), torch.tensor([math.log(1 / 3)])]
    value = ZeroOneLoss()(alphas, SigmoidMixing(), epoch=0, max_epochs=1)
    assert value.item() == pytest.approx(-10.0 * (2 / 16) / 3)


def test_sigmoid_mixing_is_independent_per_op():
    mixing = SigmoidMixing()
    assert mixing.normalized is False
    assert torch.allclose(
        mixing(torch.tensor([0.0, math.log(3.0)])), torch.tensor([0.5, 0.75])
    )


def test_threshold_export_keeps_at_most_two_inputs_above_threshold():
    names = ["none", "skip_connect", "sep_conv_3x3"]
    weights = torch.tensor(
        [
            [
                0.99,
                0.90,
                0.10,
            ],  # node 2, input 0: 'none' is never selected -> skip 0.90
            [0.10, 0.20, 0.86],  # node 2, input 1: sep 0.86
            [0.00, 0.95, 0.00],  # node 3, input 0: skip 0.95
            [0.00, 0.50, 0.80],  # node 3, input 1: best 0.80 < 0.85 -> dropped
            [0.00, 0.10, 0.20],  # node 3, input 2: not in the top two
            [0.0, 0.3, 0.1],
            [0.0, 0.2, 0.1],
            [0.0, 0.1, 0.4],
            [0.0, 0.3, 0.2],  # node 4: nothing >= 0.85
        ]
    )
    assert select_by_threshold(weights, names) == [
        [(0, "skip_connect"), (1, "sep_conv_3x3")],
        [(0, "skip_connect")],
        [],
    ]
    assert select_by_threshold(weights, names, threshold=0.3)[2] == [
        (2, "sep_conv_3x3"),
        (0, "skip_connect"),
    ]


# ------------------------------------------------------------------------------------------------------ GDAS
class _CountingOp(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.scale * x


def test_gdas_computes_one_op_per_edge_and_every_alpha_gets_a_gradient():
    torch.manual_seed(0)
    alpha = nn.Parameter(torch.randn(3, 4))  # 3 edges, 4 ops
    ops = [[_CountingOp(float(k + 1)) for k in range(4)] for _ in range(3)]
    mixing = GumbelHardMixing()
    weights = mixing(alpha)
    assert ((weights != 0).sum(-1) == 1).all()
    assert torch.allclose(weights.sum(-1), torch.ones(3))
    x = torch.tensor(2.0)
    out = sum(
        w * op(x)
        for edge_w, edge_ops in zip(weights, ops, strict=False)
        for w, op in zip(edge_w, edge_ops, strict=False)
        if w != 0
    )
    assert [sum(op.calls for op in edge_ops) for edge_ops in ops] == [1, 1, 1]
    out.backward()
    assert (alpha.grad != 0).all()


def test_gdas_straight_through_gradient_is_the_soft_sample_gradient():
    alpha = nn.Parameter(torch.tensor([0.3, -0.2, 0.5]))
    mixing = GumbelHardMixing(generator=torch.Generator().manual_seed(5))
    mixing.tau = 2.0
    hard = mixing(alpha)
    coeffs = torch.tensor([1.0, -2.0, 0.5])
    (hard * coeffs).sum().backward()
    uniform = torch.rand(3, generator=torch.Generator().manual_seed(5))
    alpha_ref = alpha.detach().clone().requires_grad_(True)
    soft = torch.softmax(
        (torch.log_softmax(alpha_ref, -1) - torch.log(-torch.log(uniform))) / 2.0, -1
    )
    assert torch.equal(
        hard.detach(), torch.nn.functional.one_hot(soft.argmax(), 3).float()
    )
    (soft * coeffs).sum().backward()
    assert torch.allclose(alpha.grad, alpha_ref.grad, atol=1e-6)


def test_gdas_temperature_schedule():
    mixing = GumbelHardMixing()
    mixing.set_progress(0, 250)
    assert mixing.tau == 10.0
    mixing.set_progress(249, 250)
    assert mixing.tau == pytest.approx(0.1)
    assert gdas_tau(124, max_epochs=250) == pytest.approx(10 - 9.9 * 124 / 249)
    assert torch.allclose(mixing.probs(torch.zeros(2)), torch.tensor([0.5, 0.5]))


def test_gdas_redraws_a_non_finite_sample(monkeypatch):
    draws = []
    real_rand = torch.rand

    def fake_rand(*args, **kwargs):
        out = real_rand(*args, **kwargs)
        draws.append(out)
        return torch.zeros_like(out) if len(draws) == 1 else torch.full_like(out, 0.5)

    monkeypatch.setattr(torch, "rand", fake_rand)
    weights = GumbelHardMixing()(torch.tensor([0.1, 0.9]))
    assert len(draws) == 2  # U = 0 gives an infinite Gumbel: redrawn
    assert torch.allclose(
        weights.detach(), torch.tensor([0.0, 1.0])
    )  # equal noise: argmax of alpha


# ---------------------------------------------------------------------------------------------------- P-DARTS
def test_pdarts_stages_are_the_official_cifar10_ones():
    assert [s.num_cells for s in PDARTS_CIFAR10_STAGES] == [5, 11, 17]
    assert [s.ops_kept for s in PDARTS_CIFAR10_STAGES] == [5, 3, 1]
    assert [s.skip_dropout for s in PDARTS_CIFAR10_STAGES] == [0.1, 0.4, 0.7]
    assert {
        (s.epochs, s.warmup_epochs, s.width_increase) for s in PDARTS_CIFAR10_STAGES
    } == {(25, 10, 0)}
    with pytest.raises(ValueError, match="skip_dropout"):
        Stage(num_cells=5, ops_kept=3, skip_dropout=1.0)


def test_prune_ops_keeps_the_strongest_active_ops():
    names = ["none"] + DARTS_OPS  # the official 8 ops
    weights = torch.tensor([[0.30, 0.05, 0.10, 0.20, 0.15, 0.08, 0.07, 0.05]])
    full = torch.ones(1, 8, dtype=torch.bool)
    # stage 1: keep 5 of 8, 'none' competes like any op; tie 0.05 / 0.05: the lower index goes first
    stage1 = prune_ops(weights, 5, full, op_names=names)
    assert stage1.tolist() == [[True, False, True, True, True, True, False, False]]
    # stage 2: keep 3 of the 5 still active; pruned ops never come back
    stage2 = prune_ops(weights, 3, stage1, op_names=names)
    assert stage2.tolist() == [[True, False, False, True, True, False, False, False]]
    # last stage: 'none' is dropped first although it is the strongest
    stage3 = prune_ops(weights, 1, stage2, op_names=names, drop_zero=True)
    assert stage3.tolist() == [[False, False, False, True, False, False, False, False]]


def test_prune_ops_without_a_zero_op():
    weights = torch.tensor(
        [[0.1, 0.3, 0.2, 0.05, 0.15, 0.12, 0.08], [0.2, 0.1, 0.3, 0.1, 0.1, 0.1, 0.1]]
    )
    mask = prune_ops(
        weights,
        2,
        torch.ones(2, 7, dtype=torch.bool),
        op_names=DARTS_OPS,
        drop_zero=True,
    )
    assert mask.tolist() == [
        [False, True, True, False, False, False, False],
        [True, False, True, False, False, False, False],
    ]
    with pytest.raises(ValueError, match="cannot keep"):
        prune_ops(weights, 3, mask)


def test_pdarts_skip_dropout_per_stage():
    rate = PDARTS_CIFAR10_STAGES[1].skip_dropout  # 0.4
    assert pdarts_skip_dropout(0, stage_rate=rate) == pytest.approx(0.4 * 24 / 25)
    assert pdarts_skip_dropout(9, stage_rate=rate) == pytest.approx(0.4 * 15 / 25)
    assert pdarts_skip_dropout(10, stage_rate=rate) == pytest.approx(0.4)
    assert pdarts_skip_dropout(15, stage_rate=rate) == pytest.approx(
        0.4 * math.exp(-1.0)
    )


def test_limit_skip_connects_replaces_the_weakest_skips():
    names = ["none", "skip_connect", "sep_conv_3x3"]
    weights = torch.tensor(
        [
            [0.5, 0.40, 0.10],  # node 2 <- 0: skip 0.40 ('none' excluded)
            [0.0, 0.30, 0.20],  # node 2 <- 1: skip 0.30, fallback sep 0.20
            [0.0, 0.35, 0.05],  # node 3 <- 0: skip 0.35, fallback sep 0.05
            [0.0, 0.10, 0.25],  # node 3 <- 1: sep 0.25
            [0.0, 0.10, 0.15],  # node 3 <- 2: sep 0.15
            [0.0, 0.60, 0.00],
            [0.0, 0.0, 0.50],
            [0.0, 0.0, 0.10],
            [0.0, 0.0, 0.10],  # node 4: skip 0.60, sep 0.50
        ]
    )
    unlimited = limit_skip_connects(weights, names, k=8)
    assert unlimited == select_top_inputs(weights, names)
    assert unlimited == [
        [(0, "skip_connect"), (1, "skip_connect")],
        [(0, "skip_connect"), (1, "sep_conv_3x3")],
        [(0, "skip_connect"), (1, "sep_conv_3x3")],
    ]
    # 4 skips, k = 2: first the 0.30 skip (node 2 <- 1 falls back to sep 0.20), then the 0.35 one
    # (node 3 <- 0 falls to sep 0.05, so node 3 now takes inputs 1 and 2)
    assert limit_skip_connects(weights, names, k=2) == [
        [(0, "skip_connect"), (1, "sep_conv_3x3")],
        [(1, "sep_conv_3x3"), (2, "sep_conv_3x3")],
        [(0, "skip_connect"), (1, "sep_conv_3x3")],
    ]
    no_skip = limit_skip_connects(weights, names, k=0)
    assert all(op != "skip_connect" for node in no_skip for _, op in node)


def test_limit_skip_connects_with_the_threshold_export():
    names = ["skip_connect", "sep_conv_3x3"]
    weights = torch.tensor(
        [[0.95, 0.90], [0.92, 0.10], [0.90, 0.30], [0.10, 0.20], [0.20, 0.10]]
    )
    assert select_by_threshold(weights, names) == [
        [(0, "skip_connect"), (1, "skip_connect")],
        [(0, "skip_connect")],
    ]
    # k = 1: first the 0.90 skip (node 3 <- 0 falls to sep 0.30: below 0.85, node 3 keeps nothing), then the 0.92
    # one (node 2 <- 1 falls to sep 0.10: dropped); node 2 keeps its 0.95 skip only
    assert limit_skip_connects(weights, names, k=1, threshold=0.85) == [
        [(0, "skip_connect")],
        [],
    ]


def test_limit_skip_connects_on_a_darts_normal_cell():
    torch.manual_seed(0)
    weights = torch.rand(14, 7)
    weights[:, 2] += 1.0  # skip dominates every edge
    selection = limit_skip_connects(weights, DARTS_OPS, k=2)
    assert len(selection) == 4 and all(len(node) == 2 for node in selection)
    kept_skips = [
        (n, j)
        for n, node in enumerate(selection)
        for j, op in node
        if op == "skip_connect"
    ]
    assert len(kept_skips) == 2
    # the kept skips are the two strongest skip edges among those selected first
    starts = [s.start for s in edge_slices(14)]
    strongest = sorted(
        (float(weights[starts[n] + j, 2]), n, j)
        for n, node in enumerate(select_top_inputs(weights, DARTS_OPS))
        for j, _ in node
    )[-2:]
    assert sorted(kept_skips) == sorted((n, j) for _, n, j in strongest)


def test_constants_block_matches_the_presets():
    assert C.PDARTS_MAX_SKIP_CONNECTS == 2
    assert C.FAIR_DARTS_THRESHOLD == 0.85
    assert (C.GDAS_TAU_MAX, C.GDAS_TAU_MIN) == (10.0, 0.1)
