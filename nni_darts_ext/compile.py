"""Compiled execution (``torch.compile``) for the retrain net and the search supernet, with an eager fallback.

Three entry points:

* :func:`compile_module` compiles one module *in place* (``nn.Module.compile``: same object, same parameters and
  state-dict keys). If ``torch.compile`` is unavailable, or the first compiled call fails, the module runs
  eagerly from then on and exactly one warning names the reason.
* :func:`compile_cells` compiles each mixed cell of a one-shot supernet (each cell's forward), not the whole
  NNI-wrapped net: the cells hold nearly all the compute, while the wrapper's Python (resampling, export,
  architecture optimisers, in-place weight perturbation of second order) stays eager.
* :class:`CompileModel`, a Lightning callback that compiles ``pl_module.model`` (e.g. the retrain net of
  :class:`~nni_darts_ext.training_module.DartsClassificationModule`) when the fit is set up.

On CUDA the default mode is ``"reduce-overhead"`` (CUDA graphs: one launch per captured graph, static shapes);
elsewhere it is torch's default mode.

Example::

    from nni_darts_ext.compile import CompileModel, compile_cells, compile_module
    net = compile_module(build_model("DARTS_V2"))
    trainer = pl.Trainer(callbacks=[CompileModel(enabled=True)])
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .checks import check_bool

__all__ = ["CompileModel", "compile_cells", "compile_module", "compile_mode_for", "compile_unavailable_reason",
           "is_compiled", "COMPILE_MODES"]

_logger = logging.getLogger(__name__)

#: ``torch.compile`` modes (torch/_inductor/list_mode_options); ``None`` is torch's default.
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Mode chosen on CUDA when none is given: CUDA graphs remove the per-kernel launch cost (static shapes).
CUDA_DEFAULT_MODE = "reduce-overhead"
#: Attribute set on a module once it has been compiled by this module (so compiling twice is a no-op).
_COMPILED_FLAG = "_nni_darts_ext_compiled"


def _check_mode(mode: Any) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {COMPILE_MODES}, got {mode!r}")


def compile_mode_for(device: torch.device | str | None, mode: str | None = None) -> str | None:
    """The compile mode to use on ``device``: ``mode`` when given, else ``"reduce-overhead"`` on CUDA, else None.

    Example::

        >>> compile_mode_for("cuda")
        'reduce-overhead'
        >>> compile_mode_for("cpu") is None
        True
    """
    _check_mode(mode)
    if mode is not None:
        return mode
    if device is not None and torch.device(device).type == "cuda":
        return CUDA_DEFAULT_MODE
    return None


def compile_unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """Why ``torch.compile`` cannot run here (None when it can): no dynamo, or no C++ compiler for CPU inductor.

    Example::

        >>> compile_unavailable_reason("cpu") is None or isinstance(compile_unavailable_reason("cpu"), str)
        True
    """
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        import torch._dynamo as dynamo
    except Exception as exc:  # pragma: no cover - broken installation
        return f"torch._dynamo cannot be imported: {exc}"
    if not dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python/platform"
    on_cpu = device is None or torch.device(device).type == "cpu"
    if on_cpu and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "no C++ compiler on PATH (TorchInductor needs one for CPU kernels)"
    return None


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` currently runs through a compiled call (False after a fallback to eager).

    Example::

        >>> is_compiled(nn.Linear(2, 2))
        False
    """
    return getattr(module, "_compiled_call_impl", None) is not None


class _CompiledCallWithFallback:
    """``module._compiled_call_impl`` that reverts the module to eager (one warning) if the compiled call fails."""

    def __init__(self, module: nn.Module, compiled: Callable[..., Any]):
        self.module = module
        self.compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:  # compile-time failure (dynamo/inductor/C++); eager re-raises real errors
            module = self.module
            module._compiled_call_impl = None
            _logger.warning("torch.compile failed for %s, running it eagerly: %s: %s", type(module).__name__,
                            type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            return module._call_impl(*args, **kwargs)


def compile_module(module: nn.Module, *, mode: str | None = None, fullgraph: bool = False,
                   dynamic: bool | None = None, device: torch.device | str | None = None,
                   warn: bool = True) -> nn.Module:
    """Compile ``module`` in place with ``torch.compile`` and return it; fall back to eager with one warning.

    The module object, its parameters and its state-dict keys stay the same (``nn.Module.compile``), so NNI's
    supernet bookkeeping, optimisers and checkpoints are unaffected. Compilation happens on the first call; if
    it fails there, the call is rerun eagerly and the module stays eager.

    Args:
        module: the module to compile.
        mode: a ``torch.compile`` mode; ``None`` picks :func:`compile_mode_for` ``(device)``.
        fullgraph: forbid graph breaks (an error then triggers the eager fallback).
        dynamic: ``torch.compile``'s ``dynamic`` (None: automatic).
        device: where the module runs (None: the device of its first parameter, else CPU).
        warn: log the warning when compilation is unavailable (set False when the caller already warned).

    Returns:
        ``module`` itself.

    Example::

        net = compile_module(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
        net(torch.randn(2, 3, 8, 8))
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    check_bool("fullgraph", fullgraph)
    check_bool("warn", warn)
    if dynamic is not None:
        check_bool("dynamic", dynamic)
    _check_mode(mode)
    if getattr(module, _COMPILED_FLAG, False):
        return module
    if device is None:
        first = next(module.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    reason = compile_unavailable_reason(device)
    if reason is not None:
        if warn:
            _logger.warning("torch.compile unavailable, running %s eagerly: %s", type(module).__name__, reason)
        return module
    compiled = torch.compile(module._call_impl, mode=compile_mode_for(device, mode), fullgraph=fullgraph,
                             dynamic=dynamic)
    module._compiled_call_impl = _CompiledCallWithFallback(module, compiled)
    setattr(module, _COMPILED_FLAG, True)
    return module


def _is_mixed_cell(module: nn.Module) -> bool:
    # NNI's DifferentiableMixedCell and every subclass or look-alike of a one-shot engine ("...MixedCell").
    return any(cls.__name__.endswith("MixedCell") for cls in type(module).__mro__)


def compile_cells(supernet: nn.Module, *, is_cell: Callable[[nn.Module], bool] | None = None,
                  mode: str | None = None, fullgraph: bool = False, dynamic: bool | None = None,
                  device: torch.device | str | None = None) -> int:
    """Compile each cell of a one-shot supernet in place (each cell's forward); returns how many were compiled.

    Cells are the modules for which ``is_cell`` is true; by default every module whose class (or a base class)
    is named ``*MixedCell`` (NNI's ``DifferentiableMixedCell`` and its subclasses). Nested cells are not compiled
    twice. When compilation is unavailable, exactly one warning is logged and nothing changes.

    Example::

        supernet = strategy.mutate_model(DartsSpace(width=16, num_cells=8, dataset="cifar"))
        compile_cells(supernet)
    """
    if not isinstance(supernet, nn.Module):
        raise TypeError(f"supernet must be a torch.nn.Module, got {type(supernet).__name__}")
    if is_cell is not None and not callable(is_cell):
        raise TypeError(f"is_cell must be callable, got {type(is_cell).__name__}")
    predicate = is_cell or _is_mixed_cell
    cells = []
    inside: set = set()
    for module in supernet.modules():
        if id(module) in inside or not predicate(module):
            continue
        cells.append(module)
        inside.update(id(m) for m in module.modules())
    if not cells:
        _logger.warning("compile_cells: no cell found in %s; nothing compiled", type(supernet).__name__)
        return 0
    if device is None:
        first = next(supernet.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    reason = compile_unavailable_reason(device)
    if reason is not None:
        _logger.warning("torch.compile unavailable, running the %d cells eagerly: %s", len(cells), reason)
        return 0
    for cell in cells:
        compile_module(cell, mode=mode, fullgraph=fullgraph, dynamic=dynamic, device=device, warn=False)
    return len(cells)


def _callback_base() -> type:
    import pytorch_lightning as pl

    return pl.Callback


class CompileModel(_callback_base()):
    """Lightning callback: compile ``pl_module.model`` (the wrapped net) in place when the fit is set up.

    ``enabled`` is a plain bool, so the callback can be created from configuration (``nni.trace`` or
    command-line arguments) and switched off without removing it. With ``cells_only=True`` (search), only the
    supernet's mixed cells are compiled (:func:`compile_cells`).

    Args:
        enabled: compile (True) or leave the model eager (False).
        mode: ``torch.compile`` mode; ``None``: ``"reduce-overhead"`` on CUDA, torch's default elsewhere.
        fullgraph: forbid graph breaks.
        dynamic: ``torch.compile``'s ``dynamic``.
        cells_only: compile the supernet's cells rather than the whole model.

    Example::

        trainer = pl.Trainer(max_epochs=600, callbacks=[CompileModel(enabled=True)])
        trainer.fit(DartsClassificationModule(...), train_loader)
    """

    def __init__(self, enabled: bool = True, *, mode: str | None = None, fullgraph: bool = False,
                 dynamic: bool | None = None, cells_only: bool = False):
        check_bool("enabled", enabled)
        check_bool("fullgraph", fullgraph)
        check_bool("cells_only", cells_only)
        if dynamic is not None:
            check_bool("dynamic", dynamic)
        _check_mode(mode)
        super().__init__()
        self.enabled = enabled
        self.mode = mode
        self.fullgraph = fullgraph
        self.dynamic = dynamic
        self.cells_only = cells_only

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not self.enabled:
            return
        model = getattr(pl_module, "model", None)
        if not isinstance(model, nn.Module):
            _logger.warning("CompileModel: %s has no .model module; nothing compiled", type(pl_module).__name__)
            return
        device = trainer.strategy.root_device if getattr(trainer, "strategy", None) is not None else None
        if self.cells_only:
            compile_cells(model, mode=self.mode, fullgraph=self.fullgraph, dynamic=self.dynamic, device=device)
        else:
            compile_module(model, mode=self.mode, fullgraph=self.fullgraph, dynamic=self.dynamic, device=device)
