"""The benchmark's report: a header saying where, when, with what and how; the cases; one row
per measurement against the roofline floor and the baseline; and the targets, when measured."""
from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass

import torch

import unshared

from .cases import CASES, MiB, Case, dtype_name, itemsize
from .devices import Device, Roofline
from .measure import Timing
from .providers import jax, uses_triton


@dataclass
class Row:
    key: str
    case: Case
    dtype: torch.dtype
    mode: str
    provider: str
    timing: Timing
    peak: int | None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def header(device: Device, date: str, busy: float | None, roofline: Roofline, args) -> str:
    """The report's title and the bullets saying where, with what and how it was measured."""
    if jax is None:
        jax_version = "not installed (provider skipped)"
    elif "jax" in args.providers:
        jax_version = jax.__version__
    else:
        jax_version = f"{jax.__version__} (provider not run)"
    versions = [f"python {platform.python_version()}", f"torch {torch.__version__}", *device.versions()]
    if uses_triton(args.providers):
        versions.append(f"triton {package_version('triton')}")
    versions += [f"jax {jax_version}", f"unshared {unshared.__version__}"]
    names = [dtype_name(d) for d in args.dtypes]
    sizes = {dtype_name(d): itemsize(d) for d in args.dtypes}
    if len(set(sizes.values())) == 1:
        element = str(next(iter(sizes.values())))
        element_note = ""
    else:
        element = "e"
        element_note = f" (e: bytes per element, {', '.join(f'{n} {s}' for n, s in sizes.items())})"
    baseline = args.providers[0]
    blas = ": what a BLAS gets here" if roofline.physical else ""
    no_peak = [dtype_name(d) for d in args.dtypes if d not in roofline.peak]
    if roofline.physical:
        rate = "FMA peak"
        ratio = (f"; x physical floor = median / floor; x matmul floor = median / the same floor with the "
                 f"matmul rate in place of the FMA peak"
                 + (f"; {', '.join(no_peak)}: no FMA microbenchmark, the matmul rate" if no_peak else ""))
    else:
        rate = "matmul rate"
        ratio = f"; FMA peak {roofline.peak_how}: the compute rate is the matmul rate" if roofline.peak_how else ""
    lines = [
        f"# unshared {device.title} benchmark{' (--quick)' if args.quick else ''}",
        "",
        f"- date: {date}",
        *device.describe(busy),
        f"- {', '.join(versions)}",
        *(f"- measured {dtype_name(d)} FMA peak ({roofline.peak_how}): {rate:.1f} GFLOP/s, the cores' "
          f"compute limit" for d, rate in roofline.peak.items()),
        *(f"- {dtype_name(d)}: the FMA microbenchmark measured less than the matmul (it was slowed "
          f"down): the floor's compute rate is the matmul rate" for d in roofline.peak_below_matmul()),
        *(f"- measured {dtype_name(d)} matmul rate ({device.matmul_size}^3, median{device.matmul_note(d)}): "
          f"{rate:.1f} GFLOP/s{blas}" for d, rate in roofline.gflops.items()),
        f"- measured memory bandwidth (copy of {device.copy_mib} MiB, read + write, "
        f"{f'best of {roofline.copies}' if roofline.copies else 'median'}): {roofline.gbps:.1f} GB/s",
    ]
    if device.kind == "cpu" and uses_triton(args.providers):
        lines.append("- Triton kernels ran in Triton's interpreter (TRITON_INTERPRET=1, CPU): their "
                     "times say nothing about their speed on a GPU")
    lines += [
        f"- times: median of the timed repetitions after {args.warmup} warm-up call{'s' * (args.warmup != 1)}, "
        f"{' and '.join(names)}; IQR = quartiles{device.timing_note()}",
        f"- floor: max(flops / {rate}{' of that dtype' if len(names) > 1 else ''}, bytes a step must "
        f"move / bandwidth); flops = 2·N·P·O·C·K forward, 3x that forward+backward; bytes = "
        f"{element}·(input + weight + output) forward, {element}·(2·input + 3·weight + 2·output) "
        f"forward+backward (the weight read twice, by the forward and the input gradient, and its gradient "
        f"written once; the input, the output and their gradients once each){element_note}{ratio}",
        f"- speed-up: that provider's median / {baseline}'s median (> 1: {baseline} is faster)",
        f"- peak transient memory (torch providers): {device.memory_note()} "
        "JAX: XLA's buffer assignment for the compiled step (temp + output bytes).",
        "",
    ]
    return "\n".join(lines)


def cases_table(keys: list[str], dtypes: list[torch.dtype]) -> str:
    """One row per case: its shape, weight size (per dtype when there are several), forward GFLOP."""
    weights = ["weight MiB"] if len(dtypes) == 1 else [f"weight MiB {dtype_name(d)}" for d in dtypes]
    lines = [f"| case | layer | {' | '.join(weights)} | forward GFLOP |",
             f"|---|---|{'---:|' * len(weights)}---:|"]
    for key in keys:
        case = CASES[key]
        mib = " | ".join(f"{case.weight_numel * itemsize(d) / MiB:.1f}" for d in dtypes)
        lines.append(f"| {key} | {case.describe()} | {mib} | {case.flops('forward') / 1e9:.3f} |")
    return "\n".join(lines) + "\n"


def results_table(rows: list[Row], roofline: Roofline, baseline: str, show_dtype: bool,
                  decimals: int = 2) -> str:
    """One row per measurement: time, floor and the ratios to it and to ``baseline``, peak memory
    (a dtype column with ``show_dtype``; milliseconds with ``decimals`` decimals). With the FMA peak
    measured (the CPU), the ratio is ``x physical floor`` and ``x matmul floor`` follows it (the
    floor with the matmul rate as the compute limit); else the ratio is ``time/floor``."""
    def ms(seconds: float) -> str:
        return f"{seconds * 1e3:.{decimals}f}"

    physical = roofline.physical
    dtype_col = " dtype |" if show_dtype else ""
    ratio_cols = "x physical floor | x matmul floor" if physical else "time/floor"
    lines = [
        f"| case | batch |{dtype_col} mode | provider | median ms | IQR ms | reps | floor ms | {ratio_cols} "
        f"| {baseline} speed-up | peak MiB | peak/weight |",
        f"|---|---:|{'---|' if show_dtype else ''}---|---|---:|---:|---:|---:|---:|{'---:|' * physical}---:|---:|---:|",
    ]
    base = {(r.key, r.dtype, r.mode): r.timing.median for r in rows if r.provider == baseline}
    for r in rows:
        c, t = r.case, r.timing
        floor = roofline.floor(c, r.mode, r.dtype)
        ratios = f"{t.median / floor:.1f}"
        if physical:
            ratios += f" | {t.median / roofline.matmul_floor(c, r.mode, r.dtype):.1f}"
        speedup = t.median / base[(r.key, r.dtype, r.mode)]
        if r.peak is None:
            peak = ratio = "n/a"
        else:
            peak, ratio = f"{r.peak / MiB:.1f}", f"{r.peak / (itemsize(r.dtype) * c.weight_numel):.2f}"
        dtype = f" {dtype_name(r.dtype)} |" if show_dtype else ""
        lines.append(
            f"| {r.key} | {c.batch} |{dtype} {r.mode} | {r.provider} | {ms(t.median)} | "
            f"{ms(t.q1)}–{ms(t.q3)} | {t.reps} | {ms(floor)} | "
            f"{ratios} | {speedup:.2f} | {peak} | {ratio} |")
    return "\n".join(lines) + "\n"


# The goals on a GPU (the issue that asked for the CUDA benchmark): forward+backward of the Triton
# backend at DeepFace L4, batch 256, against the roofline floor and against unfold+einsum.
TARGET_KEY, TARGET_MODE = "L4-256", "forward+backward"
TARGET_OURS, TARGET_OTHERS = "unshared-triton", ("unfold+bmm", "unfold+einsum")


def targets_table(rows: list[Row], roofline: Roofline) -> str:
    """The targets, per dtype where both rows were measured, as a markdown table ("" if none)."""
    find = {(r.key, r.dtype, r.mode, r.provider): r for r in rows}
    lines = []
    for dtype in dict.fromkeys(r.dtype for r in rows):
        ours = find.get((TARGET_KEY, dtype, TARGET_MODE, TARGET_OURS))
        found = [(name, find[(TARGET_KEY, dtype, TARGET_MODE, name)]) for name in TARGET_OTHERS
                 if (TARGET_KEY, dtype, TARGET_MODE, name) in find]
        if ours is None or not found:
            continue
        other_name, other = found[0]
        memory = None if ours.peak is None or other.peak is None else other.peak / max(ours.peak, 1)
        for what, value, goal, met in (
            ("time / floor", ours.timing.median / roofline.floor(ours.case, TARGET_MODE, dtype), "≤ 1.5",
             lambda v: v <= 1.5),
            (f"{other_name} time / ours", other.timing.median / ours.timing.median, "≥ 10", lambda v: v >= 10),
            (f"{other_name} peak memory / ours", memory, "≥ 5", lambda v: v >= 5),
        ):
            shown, verdict = ("n/a", "n/a") if value is None else (f"{value:.2f}", "yes" if met(value) else "no")
            lines.append(f"| {dtype_name(dtype)} | {what} | {goal} | {shown} | {verdict} |")
    if not lines:
        return ""
    return "\n".join([f"Targets ({TARGET_KEY} {TARGET_MODE}; ours = {TARGET_OURS}):", "",
                      "| dtype | measure | target | measured | met |", "|---|---|---|---:|---|", *lines]) + "\n"
