"""The demo's printed table, its ``results.json`` records and the line that says on what it ran."""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch

from .data import DIRECTIONS, MAX_SHIFT
from .experiment import Result, mean_std

__all__ = ["SPREAD", "SHIFTED", "to_records", "write_results", "format_results", "machine"]

SPREAD = "sample standard deviation over seeds"
SHIFTED = (f"test images moved 1 to {MAX_SHIFT} pixels in each of {len(DIRECTIONS)} directions "
           "(zero fill), accuracy averaged over those")


def to_records(results: list[Result]) -> list[dict]:
    """One JSON-ready record per result. Accuracies are fractions in [0, 1]; each ``*_spread`` is
    the :data:`SPREAD` (``None`` for a single seed); ``per_seed`` keeps every seed's values."""
    records = []
    for r in results:
        accuracy, accuracy_spread = mean_std(r.accuracies)
        shifted, shifted_spread = mean_std(r.shifted_accuracies)
        records.append({
            "dataset": r.dataset, "layer": r.layer, "training": r.training,
            "parameters": r.parameters, "middle_parameters": r.middle_parameters,
            "multiply_adds": r.multiply_adds, "epochs": r.epochs, "seeds": r.seeds, "spread": SPREAD,
            "accuracy": accuracy, "accuracy_spread": accuracy_spread,
            "shifted_accuracy": shifted, "shifted_accuracy_spread": shifted_spread,
            "accuracy_by_shift": [{"shift": s, "accuracy": mean, "spread": std}
                                  for s, (mean, std) in enumerate(r.shift_curve())],
            "per_seed": {"accuracy": r.accuracies, "shifted_accuracy": r.shifted_accuracies,
                         "train_seconds": r.seconds},
        })
    return records


def write_results(results: list[Result], path: Path) -> Path:
    """Write :func:`to_records` to ``path`` as JSON (a list of records)."""
    path.write_text(json.dumps(to_records(results), indent=1) + "\n")
    return path


def _cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def format_results(results: list[Result]) -> str:
    """A plain-text table (accuracies in percent), with a line that says what the numbers are."""
    head = ("dataset", "training", "middle layer", "parameters", "middle layer params", "multiply-adds",
            "test accuracy %", f"shifted 1-{MAX_SHIFT} px %")
    rows = [(r.dataset, r.training, r.layer, f"{r.parameters:,}", f"{r.middle_parameters:,}",
             f"{r.multiply_adds:,}", _cell(r.accuracies), _cell(r.shifted_accuracies)) for r in results]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
    seeds = sorted({r.seeds for r in results})
    if seeds == [1]:
        note = "Numbers from one seed each (no spread; the full demo runs 3)."
    else:
        note = f"Mean ± {SPREAD} (n={'/'.join(map(str, seeds))})."
    note += f" Shifted: {SHIFTED}. Multiply-adds: the middle layer's, per image."
    return "\n".join([*(fmt.format(*row) for row in [head, *rows]), note])


def machine(threads: int | None = None) -> str:
    """What the demo runs on: CPU model, cores, PyTorch ``threads`` (default: as set), versions, date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {threads or torch.get_num_threads()} PyTorch threads, torch "
            f"{torch.__version__}, Python {platform.python_version()}, {datetime.date.today().isoformat()}")
