"""Tiny loaders and nets, and a fake NNI trial channel, shared by the NNI-facing tests (not a test module)."""

from __future__ import annotations

import torch

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.arch import build_model
from nni_darts_ext.data import digits, search_dataloaders
from nni_darts_ext.transforms import Cutout

with import_nni_quietly():
    import nni.trial
    from nni.nas.evaluator.pytorch import DataLoader
    from nni.runtime import trial_command_channel
    from nni.runtime.trial_command_channel import ParameterRecord, TrialCommandChannel


# Tiny sizes (CONTRIBUTING.md): DARTS width 4, 3 cells, 16x16 digits, batches of 16, a few steps.
WIDTH, CELLS, IMAGE, BATCH = 4, 3, 16, 16
QUIET = {
    "accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
    "enable_model_summary": False,
}


class RecordingChannel(TrialCommandChannel):
    """Stands in for the channel a training service gives a trial: one parameter set in, metrics recorded."""

    def __init__(self, parameters):
        self.parameters = parameters
        self.received = 0
        self.metrics: list[tuple[str, float]] = []

    def receive_parameter(self):
        self.received += 1
        return ParameterRecord(parameter_id=0, parameters=self.parameters)

    def send_metric(self, type, parameter_id, trial_job_id, sequence, value):
        self.metrics.append((type, value))

    def of_type(self, kind):
        return [value for metric_type, value in self.metrics if metric_type == kind]


def fake_nni_runtime(monkeypatch):
    """Make this process look like an NNI trial; returns a factory ``(parameters) -> RecordingChannel``."""

    def start(parameters):
        channel = RecordingChannel(parameters)
        monkeypatch.setattr(trial_command_channel, "_channel", channel)
        return channel

    # nni.trial keeps the received parameters in module globals: restore them after the test.
    monkeypatch.setattr(nni.trial, "_params", None)
    monkeypatch.setattr(nni.trial, "_intermediate_seq", 0)
    monkeypatch.delenv("NNI_PLATFORM", raising=False)
    return start




def digits_loaders(seed=0, cutout=None, batch_size=BATCH):
    train_set = digits(train=True, image_size=IMAGE, transform=Cutout(cutout) if cutout else None)
    return search_dataloaders(train_set, batch_size=batch_size, seed=seed)


def digits_test_loader():
    return DataLoader(dataset=digits(train=False, image_size=IMAGE), batch_size=BATCH)


def tiny_net(arch, seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model(arch, width=WIDTH, num_cells=CELLS, image_size=IMAGE, **kwargs)


def params_after_one_step(evaluator, arch):
    """Train a fresh seeded net for exactly one step with ``evaluator``; return its weights."""
    net = tiny_net(arch)
    torch.manual_seed(123)  # loader shuffling and Cutout draw from the global RNG
    evaluator.evaluate(net)
    return [p.detach().clone() for p in net.parameters()]
