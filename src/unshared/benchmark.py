"""CPU benchmark of locally connected layers: ``unshared`` against the common baselines.

Providers, side by side in one process:

- ``unshared``: ``unshared.LocallyConnected2d`` (no bias), its own autograd backward;
- ``unfold+einsum``: ``F.unfold`` -> ``(N, C*k*k, L)``, ``torch.einsum`` with an ``(L, O, C*k*k)``
  weight, reshape; backward by autograd;
- ``jax``: ``jax.lax.conv_general_dilated_local`` under ``jax.jit`` (only when ``import jax``
  works); forward+backward is ``jax.grad`` of ``sum(y * grad_output)`` in ``x`` and ``w``.

Modes: ``forward`` (torch providers under ``torch.no_grad``) and ``forward+backward`` (forward, then
the gradients of input and weight for a fixed random ``grad_output``).

For every time the script prints the roofline floor ``max(flops / matmul rate, bytes / bandwidth)``
with the matmul rate and memory bandwidth measured at the start of the run, and the peak transient
memory of one step (see :func:`peak_transient_bytes`). Results go to stdout and to
``benchmarks/results/cpu-<date>.md``.

Run from the repository root::

    python benchmarks/bench_cpu.py            # all cases, < ~10 min on 2 cores
    python benchmarks/bench_cpu.py --quick    # small subset, < 1 min (also: unshared bench)
    python benchmarks/bench_cpu.py --cases L5-8,cifar-128
"""
from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # silence kineto (its profiler start/stop lines)

import argparse
import datetime
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import unshared

try:
    import jax
    import jax.numpy as jnp
    import numpy as np
except ImportError:
    jax = None

REPO = Path(__file__).resolve().parents[2]  # the source tree, when run from a clone
MODES = ("forward", "forward+backward")
MiB = 1 << 20


# ----------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    in_channels: int
    size: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def positions(self) -> int:
        return self.out_size ** 2

    @property
    def weight_numel(self) -> int:
        return self.positions * self.out_channels * self.in_channels * self.kernel ** 2

    def flops(self, mode: str) -> int:
        forward = 2 * self.batch * self.positions * self.out_channels * self.in_channels * self.kernel ** 2
        return forward if mode == "forward" else 3 * forward

    def bytes_moved(self, mode: str) -> int:
        """float32 bytes of every operand read or written once: input, weight, output (and, for
        forward+backward, grad_output, grad_input and grad_weight as well)."""
        x = self.batch * self.in_channels * self.size ** 2
        y = self.batch * self.out_channels * self.positions
        once = 4 * (x + self.weight_numel + y)
        return once if mode == "forward" else 2 * once

    def describe(self) -> str:
        pad = f" p{self.padding}" if self.padding else ""
        return (f"{self.name}: {self.in_channels}ch {self.size}x{self.size} -> {self.out_channels}ch "
                f"{self.out_size}x{self.out_size}, k{self.kernel} s{self.stride}{pad}")


def _deepface(layer, batch, size, kernel, stride):
    return Case(f"DeepFace {layer}", batch, 16, size, 16, kernel, stride)


CASES = {
    "L4-8": _deepface("L4", 8, 63, 9, 1),
    "L4-64": _deepface("L4", 64, 63, 9, 1),
    "L5-8": _deepface("L5", 8, 55, 7, 2),
    "L5-64": _deepface("L5", 64, 55, 7, 2),
    "L6-8": _deepface("L6", 8, 25, 5, 1),
    "L6-64": _deepface("L6", 64, 25, 5, 1),
    "cifar-128": Case("CIFAR-like", 128, 32, 16, 64, 3, 1, 1),
}
QUICK_CASES = ("L5-8", "L6-8")


# ----------------------------------------------------------------------------- measurement

@dataclass
class Timing:
    median: float
    q1: float
    q3: float
    reps: int


def measure(fn: Callable[[], object], budget_s: float, min_reps: int, max_reps: int) -> Timing:
    """Two warm-up calls (the second one sizes the run: about ``budget_s`` seconds, clamped to
    ``[min_reps, max_reps]`` repetitions), then the median and quartiles of the timed calls."""
    fn()
    start = time.perf_counter()
    fn()
    estimate = time.perf_counter() - start
    reps = max(min_reps, min(max_reps, int(budget_s / max(estimate, 1e-9))))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return Timing(median, q1, q3, reps)


def matmul_rate(reps: int) -> float:
    """float32 GFLOP/s of a 2048 x 2048 @ 2048 x 2048 matmul (median)."""
    n = 2048
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    seconds = measure(lambda: torch.mm(a, b, out=c), 0.0, reps, reps).median
    return 2 * n ** 3 / seconds / 1e9


def bandwidth(reps: int) -> float:
    """GB/s of ``dst.copy_(src)`` on 256 MiB float32 tensors, counted as bytes read + written."""
    src = torch.randn(256 * MiB // 4)
    dst = torch.empty_like(src)
    seconds = measure(lambda: dst.copy_(src), 0.0, reps, reps).median
    return 2 * src.numel() * 4 / seconds / 1e9


def peak_transient_bytes(fn: Callable[[], object]) -> int | None:
    """Peak CPU bytes held by one call of ``fn`` beyond what was allocated before it.

    ``fn`` runs once under ``torch.profiler`` with ``profile_memory=True``, which records every
    allocation (+bytes) and free (-bytes) made through PyTorch's CPU allocator. Their running sum
    in time order is the memory the call holds at each moment; its maximum is the peak. Tensors
    that existed before (inputs, weights, grad_output) are not counted; the results (output,
    gradients) are, since they are alive when ``fn`` returns.

    Check: at the end the running sum must equal the storage bytes of the returned tensors
    (everything else was freed). If it does not, an event was missed and ``None`` is returned.

    ``unshared`` maps its large transient CPU buffers with huge pages (``_utils.empty_buffer``),
    outside PyTorch's allocator and so invisible to the profiler; while measuring, that mapping is
    switched off so that the very same buffers are allocated, and counted, through the allocator.
    """
    from unshared import _utils

    threshold, _utils.HUGE_PAGE_BYTES = _utils.HUGE_PAGE_BYTES, float("inf")
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = fn()
    finally:
        _utils.HUGE_PAGE_BYTES = threshold
    tensors = result if isinstance(result, tuple) else (result,)
    kept = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())
    del result, tensors
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    if live != kept:
        log(f"    memory events do not add up ({live} B held, results have {kept} B): n/a")
        return None
    return peak


# ----------------------------------------------------------------------------- providers

@dataclass
class Steps:
    """One provider on one case: a synchronous callable per mode, and how to get its memory."""
    output: Callable[[], torch.Tensor]             # forward output, as a torch tensor (for checks)
    run: dict[str, Callable[[], object]]           # mode -> one step
    peak_bytes: Callable[[str], int | None]        # mode -> peak transient bytes, None if unknown


def torch_steps(forward: Callable, x: torch.Tensor, w: torch.Tensor, grad_out: torch.Tensor) -> Steps:
    def fwd():
        with torch.no_grad():
            return forward(x, w)

    def fwd_bwd():
        return torch.autograd.grad(forward(x, w), (x, w), grad_out)

    run = {"forward": fwd, "forward+backward": fwd_bwd}
    return Steps(fwd, run, lambda mode: peak_transient_bytes(run[mode]))


def unshared_steps(case: Case, layer: unshared.LocallyConnected2d, x, grad_out) -> Steps:
    # the module reads its own weight: passing layer.weight as w gives autograd its gradient
    return torch_steps(lambda x, w: layer(x), x, layer.weight, grad_out)


def unfold_einsum_steps(case: Case, layer: unshared.LocallyConnected2d, x, grad_out) -> Steps:
    k, s, p, o = case.kernel, case.stride, case.padding, case.out_size
    w = layer.weight.detach().reshape(case.positions, case.out_channels, -1).contiguous()

    def forward(x, w):
        cols = F.unfold(x, k, padding=p, stride=s)                   # (N, C*k*k, L)
        return torch.einsum("ncl,loc->nol", cols, w).reshape(x.shape[0], -1, o, o)

    return torch_steps(forward, x, w.requires_grad_(), grad_out)


def jax_steps(case: Case, layer: unshared.LocallyConnected2d, x, grad_out) -> Steps:
    k, s, p, o = case.kernel, case.stride, case.padding, case.out_size
    # default dimension numbers (NCHW, OIHW, NCHW): rhs is (O, C*k*k, OH, OW), C-major in dim 1
    rhs = layer.weight.detach().reshape(o, o, case.out_channels, -1).permute(2, 3, 0, 1)
    xj, wj, gj = (jnp.asarray(t.detach().contiguous().numpy()) for t in (x, rhs, grad_out))

    def forward(x, w):  # float32 products and sums: the default precision on CPU
        return jax.lax.conv_general_dilated_local(x, w, (s, s), [(p, p), (p, p)], (k, k))

    compiled = {
        "forward": (jax.jit(forward), (xj, wj)),
        "forward+backward": (jax.jit(jax.grad(lambda x, w, g: jnp.sum(forward(x, w) * g),
                                              argnums=(0, 1))), (xj, wj, gj)),
    }
    run = {mode: (lambda f=f, args=args: jax.block_until_ready(f(*args)))
           for mode, (f, args) in compiled.items()}

    def peak_bytes(mode):
        """XLA's buffer assignment for the compiled step: temporaries + outputs."""
        f, args = compiled[mode]
        stats = f.lower(*args).compile().memory_analysis()
        if stats is None:
            return None
        return stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes

    return Steps(lambda: torch.from_numpy(np.array(run["forward"]())), run, peak_bytes)


PROVIDERS = {"unshared": unshared_steps, "unfold+einsum": unfold_einsum_steps}
if jax is not None:
    PROVIDERS["jax"] = jax_steps


# ----------------------------------------------------------------------------- checks

def check_against_reference() -> None:
    """unshared matches the float64 loop reference (tests/reference.py) on a tiny strided, padded
    shape; skipped, with a note, outside a source tree."""
    if not (REPO / "tests" / "reference.py").is_file():
        log("note: tests/reference.py not found (installed package); reference check skipped")
        return
    sys.path.insert(0, str(REPO / "tests"))
    from reference import locally_connected_reference

    torch.manual_seed(0)
    layer = unshared.LocallyConnected2d(3, 4, 3, stride=2, padding=1, input_size=(7, 6), bias=False)
    x = torch.randn(2, 3, 7, 6)
    with torch.no_grad():
        got = layer(x)
    want = locally_connected_reference(x, layer.weight.detach(), stride=2, padding=1)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def check_same_output(name: str, case_key: str, got: torch.Tensor, want: torch.Tensor) -> None:
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        err = (got - want).abs().max().item() if got.shape == want.shape else "shape mismatch"
        raise AssertionError(f"{name} differs from unshared on {case_key}: max abs error {err}")


# ----------------------------------------------------------------------------- benchmark

@dataclass
class Row:
    key: str
    case: Case
    mode: str
    provider: str
    timing: Timing
    peak: int | None


def bench_case(key: str, case: Case, args) -> list[Row]:
    torch.manual_seed(0)
    layer = unshared.LocallyConnected2d(case.in_channels, case.out_channels, case.kernel,
                                        stride=case.stride, padding=case.padding,
                                        input_size=(case.size, case.size), bias=False)
    x = torch.randn(case.batch, case.in_channels, case.size, case.size, requires_grad=True)
    grad_out = torch.randn(case.batch, case.out_channels, case.out_size, case.out_size)
    steps = {name: make(case, layer, x, grad_out) for name, make in PROVIDERS.items()}

    expected = steps["unshared"].output()
    for name, s in steps.items():
        if name != "unshared":
            check_same_output(name, key, s.output(), expected)
    del expected

    rows = []
    for mode in MODES:
        for name, s in steps.items():
            log(f"  {key} {mode} {name} ...")
            timing = measure(s.run[mode], args.budget, args.min_reps, args.max_reps)
            rows.append(Row(key, case, mode, name, timing, s.peak_bytes(mode)))
    return rows


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- report

def busy_cores(seconds: float = 1.0) -> float | None:
    """How many cores other processes keep busy, from two samples of ``/proc/stat``."""
    def sample():
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (1 - (idle1 - idle0) / max(total1 - total0, 1)) * os.cpu_count()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(date: str, busy: float | None, gflops: float, gbps: float, quick: bool) -> str:
    jax_version = jax.__version__ if jax is not None else "not installed (provider skipped)"
    lines = [
        f"# unshared CPU benchmark{' (--quick)' if quick else ''}",
        "",
        f"- date: {date}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch.get_num_threads() = "
        f"{torch.get_num_threads()}, {platform.system()} {platform.machine()}; "
        f"cores busy with other work at start: {'unknown' if busy is None else f'{busy:.2f}'}",
        f"- python {platform.python_version()}, torch {torch.__version__}, jax {jax_version}, "
        f"unshared {unshared.__version__}",
        f"- measured float32 matmul rate (2048^3, median): {gflops:.1f} GFLOP/s",
        f"- measured memory bandwidth (copy of 256 MiB, read + write, median): {gbps:.1f} GB/s",
        "- times: median of the timed repetitions after 2 warm-up calls, float32; IQR = quartiles",
        "- floor: max(flops / matmul rate, bytes moved once / bandwidth); flops = 2·N·P·O·C·K "
        "forward, 3x that forward+backward; bytes = 4·(input + weight + output), doubled for "
        "forward+backward (grad_output, grad_input, grad_weight)",
        "- speed-up: that provider's median / unshared's median (> 1: unshared is faster)",
        "- peak transient memory (torch providers): one step runs under `torch.profiler` "
        "(`profile_memory=True`); the peak of the running sum of its allocations minus frees, "
        "relative to the start. Outputs and gradients count, pre-existing inputs/weights do not; "
        "memory outside PyTorch's allocator (BLAS/oneDNN scratch) is not seen. Checked per step: "
        "the final sum must equal the storage bytes of the returned tensors, else n/a. "
        "JAX: XLA's buffer assignment for the compiled step (temp + output bytes).",
        "",
    ]
    return "\n".join(lines)


def cases_table(keys: list[str]) -> str:
    lines = ["| case | layer | weight MiB | forward GFLOP |", "|---|---|---:|---:|"]
    for key in keys:
        case = CASES[key]
        lines.append(f"| {key} | {case.describe()} | {case.weight_numel * 4 / MiB:.1f} | "
                     f"{case.flops('forward') / 1e9:.3f} |")
    return "\n".join(lines) + "\n"


def results_table(rows: list[Row], gflops: float, gbps: float) -> str:
    lines = [
        "| case | batch | mode | provider | median ms | IQR ms | reps | floor ms | time/floor "
        "| unshared speed-up | peak MiB | peak/weight |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    unshared_median = {(r.key, r.mode): r.timing.median for r in rows if r.provider == "unshared"}
    for r in rows:
        c, t = r.case, r.timing
        floor = max(c.flops(r.mode) / (gflops * 1e9), c.bytes_moved(r.mode) / (gbps * 1e9))
        speedup = t.median / unshared_median[(r.key, r.mode)]
        if r.peak is None:
            peak = ratio = "n/a"
        else:
            peak, ratio = f"{r.peak / MiB:.1f}", f"{r.peak / (4 * c.weight_numel):.2f}"
        lines.append(
            f"| {r.key} | {c.batch} | {r.mode} | {r.provider} | {t.median * 1e3:.2f} | "
            f"{t.q1 * 1e3:.2f}–{t.q3 * 1e3:.2f} | {t.reps} | {floor * 1e3:.2f} | "
            f"{t.median / floor:.1f} | {speedup:.2f} | {peak} | {ratio} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"cases {','.join(QUICK_CASES)} with few repetitions (< 1 minute)")
    parser.add_argument("--cases", help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--budget", type=float, help="seconds of timed repetitions per measurement")
    parser.add_argument("--min-reps", type=int, help="fewest timed repetitions per measurement")
    parser.add_argument("--max-reps", type=int, help="most timed repetitions per measurement")
    parser.add_argument("--output", type=Path, help="markdown file to write (default: "
                        "benchmarks/results/cpu-<date>.md, cpu-<date>-quick.md with --quick)")
    args = parser.parse_args(argv)
    defaults = dict(budget=0.3, min_reps=3, max_reps=10) if args.quick else \
        dict(budget=3.0, min_reps=5, max_reps=50)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    keys = args.cases.split(",") if args.cases else list(QUICK_CASES if args.quick else CASES)
    unknown = [k for k in keys if k not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    args.keys = keys
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    date, busy = datetime.date.today().isoformat(), busy_cores()
    name = f"cpu-{date}{'-quick' if args.quick else ''}.md"
    results = REPO / "benchmarks" / "results"
    output = args.output or (results / name if results.is_dir() else Path(f"unshared-bench-{name}"))
    if busy is not None and busy > 0.2:
        log(f"warning: other work keeps {busy:.2f} cores busy; timings need an idle machine")
    if jax is None:
        log("note: `import jax` failed; the jax provider is skipped")

    check_against_reference()
    log("measuring matmul rate and bandwidth ...")
    sys_reps = 3 if args.quick else 9
    gflops, gbps = matmul_rate(sys_reps), bandwidth(sys_reps)
    log(f"  {gflops:.1f} GFLOP/s, {gbps:.1f} GB/s")

    rows = []
    for key in args.keys:
        log(f"{key}: {CASES[key].describe()}")
        rows += bench_case(key, CASES[key], args)

    report = "\n".join([header(date, busy, gflops, gbps, args.quick), cases_table(args.keys),
                        results_table(rows, gflops, gbps)])
    print(report)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    log(f"written to {output}")


if __name__ == "__main__":
    main()
