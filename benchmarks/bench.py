"""Benchmark of locally connected layers: ``unshared`` against the recipes people use, on the CPU
or on a CUDA GPU (``--device``), from a checkout::

    python benchmarks/bench.py                   # CPU, all cases (~10 min on 2 cores)
    python benchmarks/bench.py --quick           # two small cases, few repetitions (< 1 min)
    python benchmarks/bench.py --cases L5-8,cifar-128 --providers unshared-cpu,unshared-torch
    python benchmarks/bench.py --device cuda     # DeepFace L4-L6 at batch 32 and 256, float32 and bfloat16

Providers run side by side in one process, interleaved per case; every time is reported with the
roofline floor measured on the same device at the start (on the CPU the physical floor: the cores'
FMA peak and the copy bandwidth, with the matmul rate beside it), and the peak transient memory of
one step. Results go to stdout and to ``benchmarks/results/<device>-<date>...md`` (a ``--quick`` run
writes only to ``--output``). ``benchmarks/README.md`` explains every column.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # before torch is imported
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]  # the harness; unshared from the checkout if not installed

import argparse  # noqa: E402
import datetime  # noqa: E402

import torch  # noqa: E402

from harness.cases import CASES, DTYPES, MODES, Case, dtype_name  # noqa: E402
from harness.devices import DEVICES, CpuDevice, CudaDevice, Device, busy_cores, measure_roofline  # noqa: E402
from harness.measure import log, measure  # noqa: E402
from harness.providers import (BACKENDS, PROVIDERS, case_tensors, check_against_reference, check_same_output,  # noqa: E402
                               jax, jax_device, output_tolerance, uses_triton)
from harness.report import Row, cases_table, header, results_table, targets_table  # noqa: E402
from unshared.backends import cpu, triton  # noqa: E402


RESULTS = HERE / "results"


def bench_case(key: str, case: Case, dtype: torch.dtype, device: Device, args) -> list[Row]:
    """Every provider on one case in one dtype: outputs checked against the first provider, then
    each mode timed and its peak memory measured."""
    layer, x, grad_out = case_tensors(case, device, dtype)
    steps = {name: PROVIDERS[name](case, layer.weight, x, grad_out, device) for name in args.providers}

    baseline = args.providers[0]
    expected = steps[baseline].output()
    for name, s in steps.items():
        if name != baseline:
            check_same_output(name, key, s.output(), expected, output_tolerance(dtype, device), baseline)
    del expected

    rows = []
    for mode in MODES:
        for name, s in steps.items():
            log(f"  {key} {dtype_name(dtype) + ' ' if args.show_dtype else ''}{mode} {name} ...")
            timing = measure(s.run[mode], device.clock(s.host_clock), args.budget, args.min_reps,
                             args.max_reps, args.warmup)
            rows.append(Row(key, case, dtype, mode, name, timing, s.peak_bytes(mode)))
    return rows


def _split(parser, text: str, choices, what: str) -> list[str]:
    items = [item for item in text.split(",") if item]
    unknown = [item for item in items if item not in choices]
    if unknown or not items:
        parser.error(f"unknown {what}(s) {unknown}; choose from {list(choices)}")
    return items


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=list(DEVICES), default="cpu",
                        help="cpu (default) or cuda (the current CUDA device; CUDA_VISIBLE_DEVICES picks one)")
    parser.add_argument("--quick", action="store_true",
                        help=f"cases {','.join(CpuDevice.quick_cases)} (cuda: {','.join(CudaDevice.quick_cases)}) "
                             f"with few repetitions (< 1 minute)")
    parser.add_argument("--cases", help=f"comma-separated subset of {','.join(CASES)} (default: cpu "
                        f"{','.join(CpuDevice.default_cases)}; cuda {','.join(CudaDevice.default_cases)})")
    parser.add_argument("--providers", help=f"comma-separated subset of {','.join(PROVIDERS)}; the first "
                        f"is the reference of the speed-up column (default: cpu "
                        f"{','.join(CpuDevice.default_providers)}; cuda {','.join(CudaDevice.default_providers)}; "
                        f"jax only when importable, unshared-cpu only when its kernels are built)")
    parser.add_argument("--dtype", help=f"comma-separated subset of {','.join(DTYPES)} (default: cpu "
                        f"{','.join(CpuDevice.default_dtypes)}; cuda {','.join(CudaDevice.default_dtypes)})")
    parser.add_argument("--tf32", action="store_true", help="cuda: allow TF32 for float32 matmuls "
                        "(cuBLAS, our Triton kernels, JAX); default: full float32")
    parser.add_argument("--budget", type=float, help="seconds of timed repetitions per measurement")
    parser.add_argument("--min-reps", type=int, help="fewest timed repetitions per measurement")
    parser.add_argument("--max-reps", type=int, help="most timed repetitions per measurement")
    parser.add_argument("--warmup", type=int,
                        help="warm-up calls before timing (at least 1; default: cpu 2, cuda 5)")
    parser.add_argument("--output", type=Path, help="markdown file to write (default: benchmarks/results/"
                        "cpu-<date>.md or cuda-<date>-<device>.md; with --quick, nothing is written unless asked)")
    args = parser.parse_args(argv)
    device = DEVICES[args.device]
    for name, value in device.run_defaults["quick" if args.quick else "full"].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.warmup < 1 or args.min_reps < 2:
        parser.error("need --warmup >= 1 and --min-reps >= 2 (quartiles)")
    default_cases = device.quick_cases if args.quick else device.default_cases
    args.keys = _split(parser, args.cases, CASES, "case") if args.cases else list(default_cases)
    dtypes = args.dtype or ",".join(device.default_dtypes)
    args.dtypes = [DTYPES[d] for d in _split(parser, dtypes, DTYPES, "dtype")]
    args.show_dtype = args.device != "cpu" or args.dtypes != [torch.float32]
    if args.device == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise SystemExit(f"{parser.prog}: error: --device cuda needs a CUDA GPU, but "
                         f"torch.cuda.is_available() is False (torch {torch.__version__}, {build})")
    if args.providers:
        args.providers = _split(parser, args.providers, PROVIDERS, "provider")
    else:  # jax only where it has a backend for the device; the compiled kernels only when built
        args.providers = [p for p in device.default_providers
                          if (p != "jax" or jax_device(args.device)) and (p != "unshared-cpu" or cpu.available_isas())]
    return args


def prepare_backends(args) -> None:
    """Checks that every chosen provider can run, and sets what it needs; a one-line
    ``SystemExit`` when one cannot run here."""
    if "jax" in args.providers and jax_device(args.device) is None:
        why = "`import jax` failed" if jax is None else f"JAX has no {args.device} backend"
        raise SystemExit(f"error: provider jax: {why}")
    for provider in ("unshared-cpu", "unshared-cpu-contiguous", "unshared-cpu-bias"):
        if provider in args.providers and not cpu.available_isas():
            raise SystemExit(f"error: provider {provider}: {cpu._REASON}")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if not uses_triton(args.providers):
        return
    if not triton.TRITON_INSTALLED:
        raise SystemExit("error: provider unshared-triton: Triton is not installed (pip install triton)")
    if args.device == "cpu":
        # read once, when the Triton backend is first used: must be set before that
        os.environ.setdefault("TRITON_INTERPRET", "1")
        if not triton.configs.interpreting():
            raise SystemExit("error: provider unshared-triton on the CPU needs TRITON_INTERPRET=1 "
                             "in the environment before Triton's kernels are first imported")
        log("note: the Triton kernels run in Triton's interpreter on the CPU: slow, timings meaningless")


def main(argv=None) -> None:
    args = parse_args(argv)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        prepare_backends(args)
        run(args)
    finally:  # the --tf32 choice ends with the run (when main is called in-process)
        torch.backends.cuda.matmul.allow_tf32 = tf32


def run(args) -> None:
    """The benchmark that ``args`` (from :func:`parse_args`) describes: checks, roofline, every
    case in every dtype; the report to stdout and to the results file."""
    device = DEVICES[args.device]()
    date, busy = datetime.date.today().isoformat(), busy_cores()
    # a quick run writes only where asked: it never overwrites the recorded results
    output = args.output or (None if args.quick else RESULTS / f"{device.file_stem(date)}.md")
    if busy is not None and busy > 0.2:
        log(f"warning: other work keeps {busy:.2f} cores busy; timings need an idle machine")
    if jax is None:
        log("note: `import jax` failed; the jax provider is skipped")
    elif "jax" not in args.providers:
        log(f"note: the jax provider is not run (not chosen, or JAX has no {args.device} backend)")

    check_against_reference(device, list(dict.fromkeys(BACKENDS[p] for p in args.providers if p in BACKENDS)))
    log(f"measuring {'FMA peak, ' if device.kind == 'cpu' else ''}matmul rate and bandwidth ...")
    roofline = measure_roofline(device, args.dtypes, args.system_reps)
    if roofline.physical:
        log("  FMA peak (the floor's compute rate): "
            + ", ".join(f"{dtype_name(d)} {rate:.1f} GFLOP/s" for d, rate in roofline.peak.items()))
    elif roofline.peak_how:
        log(f"  FMA peak {roofline.peak_how}: the floor's compute rate is the matmul rate")
    log(f"  matmul rate{' (what a BLAS gets here)' if roofline.physical else ''}: "
        + ", ".join(f"{dtype_name(d)} {rate:.1f} GFLOP/s" for d, rate in roofline.gflops.items())
        + f"; bandwidth {roofline.gbps:.1f} GB/s")

    rows = []
    for key in args.keys:
        log(f"{key}: {CASES[key].describe()}")
        for dtype in args.dtypes:
            rows += bench_case(key, CASES[key], dtype, device, args)

    parts = [header(device, date, busy, roofline, args), cases_table(args.keys, args.dtypes),
             results_table(rows, roofline, args.providers[0], args.show_dtype, device.ms_decimals)]
    targets = targets_table(rows, roofline)
    report = "\n".join(parts + [targets] if targets else parts)
    print(report)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report)
        log(f"written to {output}")


if __name__ == "__main__":
    main()
