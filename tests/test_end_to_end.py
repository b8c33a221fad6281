"""Issue 2's end-to-end run through the public API, as a user would write it: a tiny first-order search on
digits with NNI's NasExperiment, export, plot, retrain with aux loss + drop path + cutout, evaluate."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

import nni_darts_ext as nde
from nni_darts_ext._compat import import_nni_quietly

with import_nni_quietly():
    from nni.nas.evaluator.pytorch import DataLoader
    from nni.nas.experiment import NasExperiment
    from nni.nas.hub.pytorch import DARTS as DartsSpace

pytestmark = pytest.mark.e2e  # runs searches, retrains or the CLI

IMAGE_SIZE = 16


def test_search_export_plot_retrain_evaluate(tmp_path, nni_experiment_dir):
    pl.seed_everything(0, verbose=False)
    train_set = nde.digits(train=True, image_size=IMAGE_SIZE)
    train_loader, val_loader = nde.search_dataloaders(train_set, batch_size=32)

    # Search: NNI's DARTS space + our evaluator + the first-order preset, in-process.
    evaluator = nde.darts_evaluator(
        train_loader, val_loader, max_epochs=1, learning_rate=0.05, auxiliary_loss_weight=0.0,
        limit_train_batches=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path),
    )
    experiment = NasExperiment(DartsSpace(width=4, num_cells=3, dataset="cifar"), evaluator, nde.darts_strategy())
    experiment.config.experiment_working_directory = str(nni_experiment_dir)
    assert experiment.run()
    exported = experiment.export_top_models(formatter="dict")[0]
    experiment.stop()

    # Export: NNI form with list inputs, valid, and round-trips through the original genotype text.
    arch = nde.normalize_arch(exported)
    assert all(isinstance(v, list) for k, v in arch.items() if "/input_" in k)
    nde.save_arch(arch, tmp_path / "arch.json")
    genotype_text = nde.format_genotype(nde.to_genotype(arch))
    assert nde.from_genotype(genotype_text) == arch == nde.load_arch(tmp_path / "arch.json")

    # Plot.
    nde.plot_cells(arch, tmp_path / "cells.png")
    assert (tmp_path / "cells.png").stat().st_size > 1000

    # Retrain: aux head + linear drop path + cutout, SGD + cosine, gradient clipping.
    net = nde.build_model(arch, width=8, num_cells=3, auxiliary_loss=True, drop_path_prob=0.2, image_size=IMAGE_SIZE)
    module = nde.DartsClassificationModule(max_epochs=2, learning_rate=0.05, auxiliary_loss_weight=0.4)
    module.set_model(net)
    train_aug = nde.get_dataset("digits", train=True, image_size=IMAGE_SIZE, cutout=4)
    test_set = nde.get_dataset("digits", train=False, image_size=IMAGE_SIZE)
    trainer = nde.darts_trainer(
        max_epochs=2, gradient_clip_val=5.0, limit_train_batches=6, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, DataLoader(train_aug, batch_size=32, shuffle=True))
    assert net.drop_path_prob == 0.2  # the attribute keeps p0; the DropPath modules carry the ramp
    drop_probs = {m.drop_prob for m in net.modules() if type(m).__name__ == "DropPath"}
    assert drop_probs == {0.2 * 1 / 2}
    assert {"train_loss_aux", "train_loss_main"} <= set(trainer.callback_metrics)

    # Evaluate on held-out digits: better than chance after a few steps.
    result = trainer.test(module, DataLoader(test_set, batch_size=120), verbose=False)[0]
    assert 0.1 < result["test_acc"] <= 1.0
    assert torch.isfinite(torch.tensor(result["test_loss"]))
