"""nni_darts_ext: DARTS neural-architecture search components for Microsoft NNI 3.0.

Public names are imported lazily on first use (PEP 562), so ``import nni_darts_ext`` is cheap, has no side
effects and prints nothing; ``from nni_darts_ext import DartsClassificationModule`` works as usual.

Example::

    from nni_darts_ext import DartsClassificationModule, darts_strategy, digits, search_dataloaders
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "DartsClassificationModule": "training_module",
    "darts_trainer": "evaluator",
    "darts_evaluator": "evaluator",
    "Cutout": "transforms",
    "cifar10_transforms": "transforms",
    "CIFAR10_MEAN": "constants",
    "CIFAR10_STD": "constants",
    "PRIMITIVES": "constants",
    "search_split": "data",
    "search_dataloaders": "data",
    "cifar10": "data",
    "digits": "data",
    "get_dataset": "data",
    "load_images": "datasets",
    "DataInfo": "datasets",
    "darts_space": "space",
    "DartsSpace": "space",
    "ArchError": "errors",
    "UsageError": "errors",
    "RecipeError": "errors",
    "RunOptions": "pipeline",
    "run_search": "pipeline",
    "run_retrain": "pipeline",
    "run_evaluate": "pipeline",
    "run_demo": "pipeline",
    "normalize_arch": "arch",
    "save_arch": "arch",
    "load_arch": "arch",
    "Genotype": "arch",
    "to_genotype": "arch",
    "from_genotype": "arch",
    "format_genotype": "arch",
    "random_arch": "arch",
    "build_model": "arch",
    "DARTS_V1": "arch",
    "DARTS_V2": "arch",
    "NAMED_ARCHS": "arch",
    "count_parameters": "arch",
    "plot_cell": "plotting",
    "plot_cells": "plotting",
    "plot_alpha_history": "plotting",
    "darts_strategy": "search",
    "list_strategies": "search",
    "register_strategy": "search",
    "DartsSearch": "search",
    "load_recipe": "recipes",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    try:
        module_name = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'nni_darts_ext' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
