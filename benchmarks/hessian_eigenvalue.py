"""Time one evaluation of the search-health eigenvalue: the dominant eigenvalue of the validation loss's Hessian
with respect to the architecture parameters (power iteration on Hessian-vector products), on NNI's DARTS space.

Reports seconds per evaluation, Hessian-vector products used and the process's peak RSS. One configuration per
process; give the load and thread count with every figure (``uptime``).

Example::

    python benchmarks/hessian_eigenvalue.py --width 16 --cells 8 --batch 16 --threads 2 --json runs/hessian.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # nni_darts_ext, also when it is not installed

import torch  # noqa: E402
from _common import NUM_CLASSES, load_average, peak_rss_mb, write_json  # noqa: E402

from nni_darts_ext._compat import import_nni_quietly  # noqa: E402
from nni_darts_ext.callbacks.search_health import SearchHealthMonitor  # noqa: E402
from nni_darts_ext.search import darts_strategy  # noqa: E402
from nni_darts_ext.training_module import DartsClassificationModule  # noqa: E402

with import_nni_quietly():
    from nni.nas.hub.pytorch import DARTS as DartsSpace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16, help="samples of the fixed validation batch")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--preset", default="first-order")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    strategy = darts_strategy(args.preset)
    supernet = strategy.mutate_model(DartsSpace(width=args.width, num_cells=args.cells, dataset="cifar"))
    module = DartsClassificationModule(num_classes=NUM_CLASSES)
    module.set_model(supernet)
    oneshot = strategy.configure_oneshot_module(module)
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen),
             torch.randint(0, NUM_CLASSES, (args.batch,), generator=gen))
    monitor = SearchHealthMonitor(".", hessian_every=1)
    monitor.val_batch = batch
    start = time.perf_counter()
    value, iterations, seconds = monitor.compute_eigenvalue(oneshot)
    result = {
        "width": args.width, "cells": args.cells, "batch": args.batch, "image_size": args.image_size,
        "preset": args.preset, "eigenvalue": value, "hessian_vector_products": iterations,
        "seconds": round(seconds, 2), "wall_seconds": round(time.perf_counter() - start, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1), "threads": torch.get_num_threads(), "load_average": load_average(),
    }
    if args.json_path:
        write_json(args.json_path, result)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
