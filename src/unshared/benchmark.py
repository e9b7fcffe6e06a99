"""Benchmark of locally connected layers: ``unshared`` against the common baselines, on the CPU
or on a CUDA GPU (``--device``).

Providers, side by side in one process:

- ``unshared``: ``unshared.functional.locally_connected2d`` (what ``LocallyConnected2d`` calls; no
  bias, ``backend="auto"``), its own autograd backward; ``unshared-torch`` and ``unshared-triton``:
  the same with ``backend="torch"`` / ``backend="triton"``;
- ``unfold+einsum``: ``F.unfold`` -> ``(N, C*k*k, L)``, ``torch.einsum`` with an ``(L, O, C*k*k)``
  weight, reshape; backward by autograd (cuBLAS batched matmuls on a GPU);
- ``jax``: ``jax.lax.conv_general_dilated_local`` under ``jax.jit`` (only when ``import jax`` works
  and, for ``--device cuda``, JAX has a GPU backend); forward+backward is ``jax.grad`` of
  ``sum(y * grad_output)`` in ``x`` and ``w``.

Modes: ``forward`` (torch providers under ``torch.no_grad``) and ``forward+backward`` (forward, then
the gradients of input and weight for a fixed random ``grad_output``).

For every time the script prints the roofline floor ``max(flops / matmul rate, bytes / bandwidth)``
with the matmul rate (in the benchmark dtype) and memory bandwidth measured at the start of the run
on the same device, and the peak transient memory of one step (:func:`peak_transient_bytes` on the
CPU, PyTorch's CUDA allocator statistics on a GPU). What differs between the two devices (clock,
memory probe, roofline sizes, report header) lives in :class:`CpuDevice` and :class:`CudaDevice`.
Results go to stdout and to ``benchmarks/results/cpu-<date>.md`` or
``benchmarks/results/cuda-<date>-<device>.md``.

Run from the repository root::

    python benchmarks/bench_cpu.py            # CPU, all cases, < ~10 min on 2 cores
    python benchmarks/bench_cpu.py --quick    # small subset, < 1 min (also: unshared bench)
    python benchmarks/bench_cpu.py --cases L5-8,cifar-128
    python benchmarks/bench_cuda.py           # CUDA: DeepFace L4-L6, batch 32 and 256, float32 and bfloat16

Without a GPU the CUDA-only parts can still be exercised on tiny shapes, with the Triton kernels in
Triton's interpreter (timings meaningless)::

    python benchmarks/bench_cpu.py --cases tiny --providers unshared-triton,unshared-torch
"""
from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # silence kineto (its profiler start/stop lines)
# JAX on a GPU would otherwise reserve 75% of its memory at the first computation, next to PyTorch's
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import datetime
import importlib.metadata
import platform
import re
import statistics
import subprocess
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
import unshared.functional as UF
from unshared.backends import triton_backend

try:
    import jax
    import jax.numpy as jnp
    import numpy as np
except ImportError:
    jax = None

REPO = Path(__file__).resolve().parents[2]  # the source tree, when run from a clone
MODES = ("forward", "forward+backward")
MiB = 1 << 20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


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

    def bytes_moved(self, mode: str, itemsize: int = 4) -> int:
        """Bytes of every operand read or written once, ``itemsize`` bytes per element: input,
        weight, output (and, for forward+backward, grad_output, grad_input and grad_weight too)."""
        x = self.batch * self.in_channels * self.size ** 2
        y = self.batch * self.out_channels * self.positions
        once = itemsize * (x + self.weight_numel + y)
        return once if mode == "forward" else 2 * once

    def describe(self) -> str:
        pad = f" p{self.padding}" if self.padding else ""
        return (f"{self.name}: {self.in_channels}ch {self.size}x{self.size} -> {self.out_channels}ch "
                f"{self.out_size}x{self.out_size}, k{self.kernel} s{self.stride}{pad}")


def _deepface(layer, batch, size, kernel, stride):
    return Case(f"DeepFace {layer}", batch, 16, size, 16, kernel, stride)


_DEEPFACE = {"L4": (63, 9, 1), "L5": (55, 7, 2), "L6": (25, 5, 1)}  # input size, kernel, stride
CASES = {
    **{f"{layer}-{batch}": _deepface(layer, batch, *shape) for layer, shape in _DEEPFACE.items()
       for batch in (8, 64)},
    "cifar-128": Case("CIFAR-like", 128, 32, 16, 64, 3, 1, 1),
    **{f"{layer}-{batch}": _deepface(layer, batch, *shape) for layer, shape in _DEEPFACE.items()
       for batch in (32, 256)},
    "tiny": Case("tiny", 2, 2, 4, 2, 3, 2, 1),  # a smoke test (fast enough for Triton's interpreter)
}


# ----------------------------------------------------------------------------- measurement

@dataclass
class Timing:
    median: float
    q1: float
    q3: float
    reps: int


Clock = Callable[[Callable[[], object], int], list[float]]  # (step, repetitions) -> seconds of each


def measure(fn: Callable[[], object], clock: Clock, budget_s: float, min_reps: int, max_reps: int,
            warmup: int = 2) -> Timing:
    """``warmup`` calls (the last one is timed and sizes the run: about ``budget_s`` seconds,
    clamped to ``[min_reps, max_reps]`` repetitions), then the median and quartiles of the timed
    calls."""
    for _ in range(warmup - 1):
        fn()
    estimate = clock(fn, 1)[0]
    reps = max(min_reps, min(max_reps, int(budget_s / max(estimate, 1e-9))))
    q1, median, q3 = statistics.quantiles(clock(fn, reps), n=4, method="inclusive")
    return Timing(median, q1, q3, reps)


def matmul_rate(device: Device, dtype: torch.dtype, reps: int) -> float:
    """GFLOP/s of an ``n x n @ n x n`` matmul in ``dtype`` (median; ``n = device.matmul_size``)."""
    n, dev = device.matmul_size, device.torch_device
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    c = torch.empty(n, n, device=dev, dtype=dtype)
    seconds = measure(lambda: torch.mm(a, b, out=c), device.clock(), 0.0, reps, reps).median
    return 2 * n ** 3 / seconds / 1e9


def bandwidth(device: Device, reps: int) -> float:
    """GB/s of ``dst.copy_(src)`` on ``device.copy_mib`` MiB float32 tensors, counted as bytes
    read + written."""
    src = torch.ones(device.copy_mib * MiB // 4, device=device.torch_device)  # (faster to make than randn)
    dst = torch.empty_like(src)
    seconds = measure(lambda: dst.copy_(src), device.clock(), 0.0, reps, reps).median
    return 2 * src.numel() * 4 / seconds / 1e9


def result_bytes(result) -> int:
    """Storage bytes of the tensor(s) a step returns (each storage once)."""
    tensors = result if isinstance(result, tuple) else (result,)
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


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
    kept = result_bytes(result)
    del result
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


def cuda_peak_transient_bytes(fn: Callable[[], object]) -> int:
    """Peak CUDA bytes held by one call of ``fn`` beyond what was allocated before it:
    ``torch.cuda.max_memory_allocated()`` after ``torch.cuda.reset_peak_memory_stats()``, minus
    ``torch.cuda.memory_allocated()`` before the call (PyTorch's caching allocator, which rounds
    each block up to a multiple of 512 B). As on the CPU the returned tensors count and
    pre-existing ones do not.

    Check: afterwards the allocator must hold the returned tensors' bytes beyond the start (up to
    the rounding); if it holds more, something the step allocated outlived it (a cache, a
    workspace): logged, and the peak, which includes it, is still reported.
    """
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    held, kept = torch.cuda.memory_allocated() - before, result_bytes(result)
    blocks = len(result) if isinstance(result, tuple) else 1
    del result
    if not kept <= held < kept + 512 * blocks:
        log(f"    CUDA memory after the step: {held} B held, results have {kept} B")
    return peak


# ----------------------------------------------------------------------------- devices

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


def _busy_text(busy: float | None) -> str:
    return f"cores busy with other work at start: {'unknown' if busy is None else f'{busy:.2f}'}"


def _host_clock(prepare: Callable[[], object] = lambda: None) -> Clock:
    """``time.perf_counter`` around each call of a synchronous step, ``prepare()`` before each."""
    def clock(fn, reps):
        times = []
        for _ in range(reps):
            prepare()
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return times
    return clock


class Device:
    """What differs between the CPU and a CUDA GPU: defaults, the clock, the memory probe, the
    sizes of the roofline measurements and the device's lines in the report."""

    kind: str                            # the --device name
    title: str                           # in the report's title
    torch_device: torch.device
    default_cases: tuple[str, ...]
    quick_cases: tuple[str, ...]
    default_providers: tuple[str, ...]   # the first is the reference of the speed-up column
    default_dtypes: tuple[str, ...]
    matmul_size: int                     # n of the n x n @ n x n matmul that measures the matmul rate
    copy_mib: int                        # MiB copied to measure the memory bandwidth
    ms_decimals: int                     # of the milliseconds in the results table
    # "quick" / "full" run settings: seconds of timed repetitions per measurement, fewest and most
    # repetitions, warm-up calls, repetitions of each roofline measurement
    run_defaults: dict[str, dict[str, float]]

    def clock(self, host: bool = False) -> Clock:
        """How steps are timed; ``host``: the step blocks until its results are ready and runs
        outside PyTorch's streams (JAX)."""
        return _host_clock()

    def peak_transient_bytes(self, fn: Callable[[], object]) -> int | None:
        """Peak bytes one call of ``fn`` allocates beyond what existed before (None: unknown)."""
        raise NotImplementedError

    def file_stem(self, date: str) -> str:
        """The default results file name, without ``-quick.md`` / ``.md``."""
        return f"{self.kind}-{date}"

    def describe(self, busy: float | None) -> list[str]:
        """Report lines naming the machine; ``busy``: cores other work kept busy at the start."""
        raise NotImplementedError

    def versions(self) -> list[str]:
        """Versions for the report beyond python, torch, triton, jax and unshared."""
        return []

    def matmul_note(self, dtype: torch.dtype) -> str:
        """How matmuls in ``dtype`` are computed, when it matters (TF32)."""
        return ""

    def timing_note(self) -> str:
        return ""

    def memory_note(self) -> str:
        raise NotImplementedError


class CpuDevice(Device):
    """The CPU: host clock, memory from ``torch.profiler`` (:func:`peak_transient_bytes`)."""

    kind, title, torch_device = "cpu", "CPU", torch.device("cpu")
    default_cases = ("L4-8", "L4-64", "L5-8", "L5-64", "L6-8", "L6-64", "cifar-128")
    quick_cases = ("L5-8", "L6-8")
    default_providers = ("unshared", "unfold+einsum", "jax")
    default_dtypes = ("float32",)
    matmul_size, copy_mib, ms_decimals = 2048, 256, 2
    run_defaults = {"quick": dict(budget=0.3, min_reps=3, max_reps=10, warmup=2, system_reps=3),
                    "full": dict(budget=3.0, min_reps=5, max_reps=50, warmup=2, system_reps=9)}

    def peak_transient_bytes(self, fn: Callable[[], object]) -> int | None:
        return peak_transient_bytes(fn)

    def describe(self, busy: float | None) -> list[str]:
        return [f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch.get_num_threads() = "
                f"{torch.get_num_threads()}, {platform.system()} {platform.machine()}; {_busy_text(busy)}"]

    def memory_note(self) -> str:
        return ("one step runs under `torch.profiler` (`profile_memory=True`); the peak of the "
                "running sum of its allocations minus frees, relative to the start. Outputs and "
                "gradients count, pre-existing inputs/weights do not; memory outside PyTorch's "
                "allocator (BLAS/oneDNN scratch) is not seen. Checked per step: the final sum must "
                "equal the storage bytes of the returned tensors, else n/a.")


class CudaDevice(Device):
    """The current CUDA device: CUDA events (the L2 cache overwritten before each timed call),
    memory from PyTorch's CUDA allocator statistics (:func:`cuda_peak_transient_bytes`)."""

    kind, title = "cuda", "CUDA"
    default_cases = tuple(f"{layer}-{batch}" for layer in _DEEPFACE for batch in (32, 256))
    quick_cases = ("L6-32", "L4-256")
    default_providers = ("unshared-triton", "unshared-torch", "unfold+einsum", "jax")
    default_dtypes = ("float32", "bfloat16")
    matmul_size, copy_mib, ms_decimals = 8192, 1024, 3
    flush_mib = 256  # more than any current GPU's L2 cache
    run_defaults = {"quick": dict(budget=0.2, min_reps=10, max_reps=50, warmup=5, system_reps=5),
                    "full": dict(budget=1.0, min_reps=20, max_reps=200, warmup=5, system_reps=20)}

    def __init__(self):
        self.index = torch.cuda.current_device()
        self.torch_device = torch.device("cuda", self.index)
        self.properties = torch.cuda.get_device_properties(self.index)
        self._flush = torch.empty(self.flush_mib * MiB // 4, dtype=torch.int32, device=self.torch_device)

    def flush_l2(self) -> None:
        """Overwrite the L2 cache, so that no step reads operands the previous one left there."""
        self._flush.zero_()

    def _flush_and_synchronize(self) -> None:
        self.flush_l2()
        torch.cuda.synchronize()

    def clock(self, host: bool = False) -> Clock:
        """CUDA events around each call on the current stream (calls queued back to back, the
        events read after one final synchronize); with ``host``, the host clock after a
        synchronize."""
        if host:
            return _host_clock(self._flush_and_synchronize)

        def clock(fn, reps):
            events = []
            for _ in range(reps):
                self.flush_l2()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                events.append((start, end))
            torch.cuda.synchronize()
            return [start.elapsed_time(end) / 1e3 for start, end in events]
        return clock

    def peak_transient_bytes(self, fn: Callable[[], object]) -> int | None:
        return cuda_peak_transient_bytes(fn)

    def file_stem(self, date: str) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.properties.name.lower()).strip("-")
        return f"cuda-{date}-{slug}"

    def describe(self, busy: float | None) -> list[str]:
        p = self.properties
        free, total = torch.cuda.mem_get_info(self.index)
        try:
            utilization = f"{torch.cuda.utilization(self.index)}%"
        except Exception:  # needs pynvml (nvidia-ml-py)
            utilization = "unknown"
        return [
            f"- device: {torch.cuda.get_device_name(self.index)} (cuda:{self.index}), compute capability "
            f"{p.major}.{p.minor}, {p.multi_processor_count} SMs, {total / 2**30:.1f} GiB "
            f"({free / 2**30:.1f} GiB free at start); GPU utilization at start: {utilization}",
            f"- host: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; "
            f"{_busy_text(busy)}",
        ]

    def versions(self) -> list[str]:
        return [f"CUDA {torch.version.cuda} (torch build)", f"NVIDIA driver {driver_version()}"]

    @staticmethod
    def _float32() -> str:
        return "TF32 allowed" if torch.backends.cuda.matmul.allow_tf32 else "full float32 (TF32 not allowed)"

    def matmul_note(self, dtype: torch.dtype) -> str:
        return f", {self._float32()}" if dtype == torch.float32 else ""

    def timing_note(self) -> str:
        return (f"; float32 matmuls (cuBLAS, the Triton kernels, JAX): {self._float32()}; torch "
                f"providers: CUDA events around each call on the current stream, calls queued back "
                f"to back, the L2 cache overwritten ({self.flush_mib} MiB) before each outside the "
                f"timed region; jax: host clock around `block_until_ready` after a device "
                f"synchronize (includes its dispatch)")

    def memory_note(self) -> str:
        return ("`torch.cuda.max_memory_allocated()` over one step after "
                "`torch.cuda.reset_peak_memory_stats()`, minus `torch.cuda.memory_allocated()` "
                "before it (PyTorch's caching allocator). Outputs and gradients count, pre-existing "
                "inputs/weights do not; cuBLAS workspaces count only when allocated during the "
                "step; memory allocated outside PyTorch's allocator is not seen.")


def driver_version() -> str:
    """The NVIDIA driver version from ``nvidia-smi``, else the CUDA driver API version."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return out.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    api = getattr(torch._C, "_cuda_getDriverVersion", lambda: 0)()
    return f"unknown (CUDA driver API {api // 1000}.{api % 1000 // 10})" if api else "unknown"


DEVICES = {"cpu": CpuDevice, "cuda": CudaDevice}


# ----------------------------------------------------------------------------- providers

@dataclass
class Steps:
    """One provider on one case: a callable per mode, and how to time it and get its memory."""
    output: Callable[[], torch.Tensor]             # forward output, as a torch tensor (for checks)
    run: dict[str, Callable[[], object]]           # mode -> one step
    peak_bytes: Callable[[str], int | None]        # mode -> peak transient bytes, None if unknown
    host_clock: bool = False                       # synchronous steps outside PyTorch's stream


def torch_steps(forward: Callable, x: torch.Tensor, w: torch.Tensor, grad_out: torch.Tensor,
                device: Device) -> Steps:
    def fwd():
        with torch.no_grad():
            return forward(x, w)

    def fwd_bwd():
        return torch.autograd.grad(forward(x, w), (x, w), grad_out)

    run = {"forward": fwd, "forward+backward": fwd_bwd}
    return Steps(fwd, run, lambda mode: device.peak_transient_bytes(run[mode]))


def unshared_provider(backend: str) -> Callable[..., Steps]:
    """Steps of ``unshared.functional.locally_connected2d`` with ``backend``."""
    def make(case: Case, w: torch.Tensor, x, grad_out, device: Device) -> Steps:
        def forward(x, w):
            return UF.locally_connected2d(x, w, None, case.stride, case.padding, backend=backend)
        # w is the layer's weight (its strided storage layout, read without a copy)
        return torch_steps(forward, x, w, grad_out, device)
    return make


def unfold_einsum_steps(case: Case, w: torch.Tensor, x, grad_out, device: Device) -> Steps:
    k, s, p, o = case.kernel, case.stride, case.padding, case.out_size
    w = w.detach().reshape(case.positions, case.out_channels, -1).contiguous()

    def forward(x, w):
        cols = F.unfold(x, k, padding=p, stride=s)                   # (N, C*k*k, L)
        return torch.einsum("ncl,loc->nol", cols, w).reshape(x.shape[0], -1, o, o)

    return torch_steps(forward, x, w.requires_grad_(), grad_out, device)


def jax_device(kind: str):
    """The JAX device for ``kind`` (``"cpu"``, or ``"cuda"``: a JAX GPU device, the one with
    PyTorch's current index when there are several), or None when JAX or that backend is missing."""
    if jax is None:
        return None
    try:
        devices = jax.devices("gpu" if kind == "cuda" else "cpu")
    except RuntimeError:  # no such backend
        return None
    index = torch.cuda.current_device() if kind == "cuda" else 0
    return devices[index] if index < len(devices) else None


def jax_steps(case: Case, w: torch.Tensor, x, grad_out, device: Device) -> Steps:
    k, s, p, o = case.kernel, case.stride, case.padding, case.out_size
    where, dtype = jax_device(device.kind), jnp.dtype(dtype_name(x.dtype))
    # default dimension numbers (NCHW, OIHW, NCHW): rhs is (O, C*k*k, OH, OW), C-major in dim 1
    rhs = w.detach().reshape(o, o, case.out_channels, -1).permute(2, 3, 0, 1)
    # through float32 on the host (exact for bfloat16/float16), then the same dtype on JAX's device
    xj, wj, gj = (jax.device_put(t.detach().float().cpu().contiguous().numpy(), where).astype(dtype)
                  for t in (x, rhs, grad_out))
    # float32 on a GPU: TF32 only when PyTorch's matmuls may use it too (XLA's default precision may)
    full = x.dtype == torch.float32 and device.kind == "cuda" and not torch.backends.cuda.matmul.allow_tf32
    precision = jax.lax.Precision.HIGHEST if full else None

    def forward(x, w):  # bfloat16/float16 in and out; XLA chooses the accumulation type
        return jax.lax.conv_general_dilated_local(x, w, (s, s), [(p, p), (p, p)], (k, k),
                                                  precision=precision)

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

    def output():
        y = np.asarray(run["forward"]().astype(jnp.float32))
        return torch.from_numpy(y).to(x.device, x.dtype)

    return Steps(output, run, peak_bytes, host_clock=True)


PROVIDERS = {
    "unshared": unshared_provider("auto"),
    "unshared-torch": unshared_provider("torch"),
    "unshared-triton": unshared_provider("triton"),
    "unfold+einsum": unfold_einsum_steps,
    "jax": jax_steps,
}
BACKENDS = {"unshared": "auto", "unshared-torch": "torch", "unshared-triton": "triton"}


def uses_triton(providers) -> bool:
    return any(BACKENDS.get(p) == "triton" for p in providers)


# ----------------------------------------------------------------------------- checks

def check_against_reference(device: Device, backends=("auto",)) -> None:
    """Each backend matches the float64 loop reference (tests/reference.py) on a tiny strided,
    padded shape, in float64 on ``device``; skipped, with a note, outside a source tree."""
    if not (REPO / "tests" / "reference.py").is_file():
        log("note: tests/reference.py not found (installed package); reference check skipped")
        return
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    from reference import locally_connected_reference

    for backend in backends:
        torch.manual_seed(0)
        layer = unshared.LocallyConnected2d(3, 4, 3, stride=2, padding=1, input_size=(7, 6), bias=False,
                                            device=device.torch_device, dtype=torch.float64, backend=backend)
        x = torch.randn(2, 3, 7, 6, dtype=torch.float64, device=device.torch_device)
        with torch.no_grad():
            got = layer(x).cpu()
        want = locally_connected_reference(x.cpu(), layer.weight.detach().cpu(), stride=2, padding=1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def output_tolerance(dtype: torch.dtype, device: Device) -> float:
    """Relative tolerance between providers' outputs: a few roundings of the output dtype."""
    if dtype in (torch.bfloat16, torch.float16):
        return 3e-2
    if device.kind == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return 1e-2
    return 1e-4


def check_same_output(name: str, case_key: str, got: torch.Tensor, want: torch.Tensor, tol: float,
                      baseline: str) -> None:
    got, want = got.float().cpu(), want.float().cpu()
    atol = tol * max(1.0, want.abs().max().item())  # relative to the output's scale when above 1
    if got.shape != want.shape or not torch.allclose(got, want, rtol=tol, atol=atol):
        err = (got - want).abs().max().item() if got.shape == want.shape else "shape mismatch"
        raise AssertionError(f"{name} differs from {baseline} on {case_key}: max abs error {err}")


# ----------------------------------------------------------------------------- benchmark

@dataclass
class Row:
    key: str
    case: Case
    dtype: torch.dtype
    mode: str
    provider: str
    timing: Timing
    peak: int | None


def bench_case(key: str, case: Case, dtype: torch.dtype, device: Device, args) -> list[Row]:
    """Every provider on one case in one dtype: outputs checked against the first provider, then
    each mode timed and its peak memory measured."""
    torch.manual_seed(0)
    dev = device.torch_device
    layer = unshared.LocallyConnected2d(case.in_channels, case.out_channels, case.kernel,
                                        stride=case.stride, padding=case.padding,
                                        input_size=(case.size, case.size), bias=False, device=dev, dtype=dtype)
    x = torch.randn(case.batch, case.in_channels, case.size, case.size, device=dev, dtype=dtype,
                    requires_grad=True)
    grad_out = torch.randn(case.batch, case.out_channels, case.out_size, case.out_size, device=dev, dtype=dtype)
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


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- report

@dataclass
class Roofline:
    """Rates measured on the device: matmul GFLOP/s per dtype, copy bandwidth in GB/s."""
    gflops: dict[torch.dtype, float]
    gbps: float

    def floor(self, case: Case, mode: str, dtype: torch.dtype) -> float:
        """Seconds: max(flops / matmul rate, bytes moved once / bandwidth)."""
        return max(case.flops(mode) / (self.gflops[dtype] * 1e9),
                   case.bytes_moved(mode, itemsize(dtype)) / (self.gbps * 1e9))


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
    lines = [
        f"# unshared {device.title} benchmark{' (--quick)' if args.quick else ''}",
        "",
        f"- date: {date}",
        *device.describe(busy),
        f"- {', '.join(versions)}",
        *(f"- measured {dtype_name(d)} matmul rate ({device.matmul_size}^3, median{device.matmul_note(d)}): "
          f"{rate:.1f} GFLOP/s" for d, rate in roofline.gflops.items()),
        f"- measured memory bandwidth (copy of {device.copy_mib} MiB, read + write, median): "
        f"{roofline.gbps:.1f} GB/s",
    ]
    if device.kind == "cpu" and uses_triton(args.providers):
        lines.append("- Triton kernels ran in Triton's interpreter (TRITON_INTERPRET=1, CPU): their "
                     "times say nothing about their speed on a GPU")
    lines += [
        f"- times: median of the timed repetitions after {args.warmup} warm-up call{'s' * (args.warmup != 1)}, "
        f"{' and '.join(names)}; IQR = quartiles{device.timing_note()}",
        f"- floor: max(flops / matmul rate{' of that dtype' if len(names) > 1 else ''}, bytes moved once "
        f"/ bandwidth); flops = 2·N·P·O·C·K forward, 3x that forward+backward; bytes = "
        f"{element}·(input + weight + output), doubled for forward+backward (grad_output, grad_input, "
        f"grad_weight){element_note}",
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
    (a dtype column with ``show_dtype``; milliseconds with ``decimals`` decimals)."""
    def ms(seconds: float) -> str:
        return f"{seconds * 1e3:.{decimals}f}"

    dtype_col = " dtype |" if show_dtype else ""
    lines = [
        f"| case | batch |{dtype_col} mode | provider | median ms | IQR ms | reps | floor ms | time/floor "
        f"| {baseline} speed-up | peak MiB | peak/weight |",
        f"|---|---:|{'---|' if show_dtype else ''}---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {(r.key, r.dtype, r.mode): r.timing.median for r in rows if r.provider == baseline}
    for r in rows:
        c, t = r.case, r.timing
        floor = roofline.floor(c, r.mode, r.dtype)
        speedup = t.median / base[(r.key, r.dtype, r.mode)]
        if r.peak is None:
            peak = ratio = "n/a"
        else:
            peak, ratio = f"{r.peak / MiB:.1f}", f"{r.peak / (itemsize(r.dtype) * c.weight_numel):.2f}"
        dtype = f" {dtype_name(r.dtype)} |" if show_dtype else ""
        lines.append(
            f"| {r.key} | {c.batch} |{dtype} {r.mode} | {r.provider} | {ms(t.median)} | "
            f"{ms(t.q1)}–{ms(t.q3)} | {t.reps} | {ms(floor)} | "
            f"{t.median / floor:.1f} | {speedup:.2f} | {peak} | {ratio} |")
    return "\n".join(lines) + "\n"


# The goals on a GPU (the issue that asked for the CUDA benchmark): forward+backward of the Triton
# backend at DeepFace L4, batch 256, against the roofline floor and against unfold+einsum.
TARGET_KEY, TARGET_MODE = "L4-256", "forward+backward"
TARGET_OURS, TARGET_OTHER = "unshared-triton", "unfold+einsum"


def targets_table(rows: list[Row], roofline: Roofline) -> str:
    """The targets, per dtype where both rows were measured, as a markdown table ("" if none)."""
    find = {(r.key, r.dtype, r.mode, r.provider): r for r in rows}
    lines = []
    for dtype in dict.fromkeys(r.dtype for r in rows):
        ours = find.get((TARGET_KEY, dtype, TARGET_MODE, TARGET_OURS))
        other = find.get((TARGET_KEY, dtype, TARGET_MODE, TARGET_OTHER))
        if ours is None or other is None:
            continue
        memory = None if ours.peak is None or other.peak is None else other.peak / max(ours.peak, 1)
        for what, value, goal, met in (
            ("time / floor", ours.timing.median / roofline.floor(ours.case, TARGET_MODE, dtype), "≤ 1.5",
             lambda v: v <= 1.5),
            (f"{TARGET_OTHER} time / ours", other.timing.median / ours.timing.median, "≥ 10", lambda v: v >= 10),
            (f"{TARGET_OTHER} peak memory / ours", memory, "≥ 5", lambda v: v >= 5),
        ):
            shown, verdict = ("n/a", "n/a") if value is None else (f"{value:.2f}", "yes" if met(value) else "no")
            lines.append(f"| {dtype_name(dtype)} | {what} | {goal} | {shown} | {verdict} |")
    if not lines:
        return ""
    return "\n".join([f"Targets ({TARGET_KEY} {TARGET_MODE}; ours = {TARGET_OURS}):", "",
                      "| dtype | measure | target | measured | met |", "|---|---|---|---:|---|", *lines]) + "\n"


# ----------------------------------------------------------------------------- main

def _split(parser, text: str, choices, what: str) -> list[str]:
    items = [item for item in text.split(",") if item]
    unknown = [item for item in items if item not in choices]
    if unknown or not items:
        parser.error(f"unknown {what}(s) {unknown}; choose from {list(choices)}")
    return items


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
                        f"jax only when importable)")
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
                        "cpu-<date>.md or cuda-<date>-<device>.md; -quick appended with --quick)")
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
    else:  # jax only where it has a backend for the device
        args.providers = [p for p in device.default_providers if p != "jax" or jax_device(args.device)]
    return args


def prepare_backends(args) -> None:
    """Checks that every chosen provider can run, and sets what it needs; a one-line
    ``SystemExit`` when one cannot run here."""
    if "jax" in args.providers and jax_device(args.device) is None:
        why = "`import jax` failed" if jax is None else f"JAX has no {args.device} backend"
        raise SystemExit(f"error: provider jax: {why}")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if not uses_triton(args.providers):
        return
    if not triton_backend.TRITON_INSTALLED:
        raise SystemExit("error: provider unshared-triton: Triton is not installed (pip install triton)")
    if args.device == "cpu":
        # read when the kernels are defined: must be set before their module is first imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
        kernels = sys.modules.get("unshared.backends._triton_kernels")
        if os.environ["TRITON_INTERPRET"] != "1" or (kernels is not None and not kernels.INTERPRET):
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
    name = f"{device.file_stem(date)}{'-quick' if args.quick else ''}.md"
    results = REPO / "benchmarks" / "results"
    output = args.output or (results / name if results.is_dir() else Path(f"unshared-bench-{name}"))
    if busy is not None and busy > 0.2:
        log(f"warning: other work keeps {busy:.2f} cores busy; timings need an idle machine")
    if jax is None:
        log("note: `import jax` failed; the jax provider is skipped")
    elif "jax" not in args.providers:
        log(f"note: the jax provider is not run (not chosen, or JAX has no {args.device} backend)")

    check_against_reference(device, list(dict.fromkeys(BACKENDS[p] for p in args.providers if p in BACKENDS)))
    log("measuring matmul rate and bandwidth ...")
    roofline = Roofline({d: matmul_rate(device, d, args.system_reps) for d in args.dtypes},
                        bandwidth(device, args.system_reps))
    log("  " + ", ".join(f"{dtype_name(d)} {rate:.1f} GFLOP/s" for d, rate in roofline.gflops.items())
        + f", {roofline.gbps:.1f} GB/s")

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
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    log(f"written to {output}")


if __name__ == "__main__":
    main()
