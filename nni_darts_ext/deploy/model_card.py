"""The model card of an export: ``model_card.json`` (read back by ``predict`` and ``evaluate --model``) and
``model_card.md`` (the same facts for people).

Example::

    write_model_card(folder, card)       # folder/model_card.json, folder/model_card.md
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io import atomic_write_json, atomic_write_text

__all__ = ["CARD_FILE", "CARD_MARKDOWN", "CARD_VERSION", "RECIPE_FILE", "read_model_card",
           "write_model_card"]

CARD_FILE = "model_card.json"
CARD_MARKDOWN = "model_card.md"
CARD_VERSION = 1
#: The run's recipe, copied into the export (``evaluate --model`` finds the test set with it).
RECIPE_FILE = "recipe.yaml"



def read_model_card(path: Path) -> dict[str, Any]:
    """``model_card.json`` as a dict; :class:`~nni_darts_ext.errors.ExportError` when unreadable or incomplete."""
    from ..errors import ExportError

    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot be read as a model card ({' '.join(str(exc).split())})") from None
    missing = [k for k in ("card_version", "files", "preprocessing", "classes") if not isinstance(card, dict)
               or k not in card]
    if missing:
        raise ExportError(f"{path}: not a model card of nni-darts export (no {', '.join(missing)})")
    return card


def _markdown(card: dict[str, Any]) -> str:
    data, pre = card["data"], card["preprocessing"]
    lines = [
        f"# Model card: {card['recipe']['name']} on {data['name']}",
        "",
        f"Exported by `nni-darts export` from `{card['run']}`. Files: "
        + ", ".join(f"`{f['file']}` ({name}, run with {f['runtime']})" for name, f in card["files"].items()) + ".",
        "They load with plain `onnxruntime` / `torch.jit.load`; neither NNI nor nni_darts_ext is needed.",
        "",
        "## Architecture",
        "",
        "```",
        card["genotype"],
        "```",
        "",
        f"![cells]({card['cells_plot']})" if card["cells_plot"] else "(no cell plot)",
        "",
        f"- parameters: {card['params']:,}",
        f"- multiply-adds of one image {card['macs_input_shape']}: {card['macs']:,} ({card['macs_counter']})",
        f"- width {card['width']}, {card['cells']} cells; inference form: no auxiliary head, no drop path, eval "
        "BatchNorm",
        "",
        "## Input",
        "",
        f"- input `{card['input']['name']}`, shape {card['input']['shape']}, {card['input']['dtype']}; output "
        f"`logits` ({len(card['classes'])} classes)",
        f"- preprocessing {'inside the graph' if pre['included'] else 'by the caller'}: resize to "
        f"{pre['image_size']}x{pre['image_size']} ({pre['resize']}, always the caller's), {pre['in_channels']} "
        f"channels, pixel values / 255"
        + ("" if pre["included"] else f", then (x - mean) / std with mean {pre['mean']}, std {pre['std']}")
        + (f"; the graph takes pixel values 0..255 and normalises with mean {pre['mean']}, std {pre['std']}"
           if pre["included"] else ""),
        f"- classes: {', '.join(card['classes'])}",
        "",
        "## Data",
        "",
        f"- dataset {data['name']}: {data['images']['train']} training and {data['images']['test']} test images, "
        f"{data['image_size']}x{data['image_size']}, {data['in_channels']} channels",
        "",
        "## Accuracy",
        "",
        f"- test accuracy (PyTorch, `retrain`): {card['test_accuracy']}",
        "",
        "## Parity (exported vs PyTorch, fp32)",
        "",
        "| file | images | max abs logit diff | top-1 agreement | accuracy |",
        "|---|---|---|---|---|",
    ]
    for name, p in card["parity"].items():
        lines.append(f"| {card['files'][name]['file']} | {p['images']} | {p['max_abs_diff']:.3g} | "
                     f"{p['top1_agreement']:.4f} | {p['accuracy']:.4f} |")
    lat = card["latency"]
    batches = sorted({b for figures in lat["ms"].values() for b in figures})
    lines += [
        "",
        f"## CPU latency (median of {lat['repeats']} runs, {lat['threads']} thread(s), milliseconds per call)",
        "",
        "| runtime | " + " | ".join(b.replace("_", " ") for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for runtime, figures in lat["ms"].items():
        lines.append(f"| {runtime} | " + " | ".join(f"{figures[b]:.3f}" for b in batches) + " |")
    lines += ["", f"Measured with torch.utils.benchmark on {lat['machine']}; load average (1 min) "
              f"{lat['load_average_1min']} when measured.", "", "## Recipe", "", "```yaml",
              card["recipe_yaml"].rstrip(), "```", ""]
    return "\n".join(lines)


def write_model_card(folder: Path, card: dict[str, Any]) -> None:
    """Write ``folder/model_card.json`` and ``folder/model_card.md``.

    Example::

        write_model_card(Path("runs/demo/export"), card)
    """
    atomic_write_json(folder / CARD_FILE, card)
    atomic_write_text(folder / CARD_MARKDOWN, _markdown(card))
