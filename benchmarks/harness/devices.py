"""Where the benchmark runs: the CPU or a CUDA GPU (clock, memory probe, report lines), and the
device's measured limits that make the roofline floor: on the CPU the cores' FMA peak (the compiled
microbenchmark, ``unshared.backends.cpu.fma_peak``) and the copy bandwidth, with the matmul rate
beside them (what a BLAS gets here); on CUDA the matmul rate and the copy bandwidth."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from unshared.backends import cpu as cpu_kernels

from .cases import CPU_WORKLOAD_CASES, DEEPFACE, MiB, Case, itemsize
from .measure import Clock, cuda_peak_transient_bytes, measure, rss_peak_transient_bytes


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

    def fma_peak(self, dtypes, reps: int) -> tuple[dict[torch.dtype, float], str]:
        """The cores' measured FMA peak in GFLOP/s per dtype it was measured for, and how it was
        measured (or why not: then the floor's compute rate is the matmul rate); none on CUDA."""
        return {}, ""

    def memory_note(self) -> str:
        raise NotImplementedError


class CpuDevice(Device):
    """The CPU: host clock, memory as the resident-set high-water mark (:func:`rss_peak_transient_bytes`)."""

    kind, title, torch_device = "cpu", "CPU", torch.device("cpu")
    default_cases = ("L4-8", "L4-64", "L5-8", "L5-64", "L6-8", "L6-64", "cifar-128", *CPU_WORKLOAD_CASES)
    quick_cases = ("L5-8", "L6-8")
    default_providers = ("unshared-cpu", "unshared-torch", "unfold+einsum", "jax")
    default_dtypes = ("float32",)
    matmul_size, copy_mib, ms_decimals = 2048, 256, 2
    run_defaults = {"quick": dict(budget=0.3, min_reps=3, max_reps=10, warmup=2, system_reps=3),
                    "full": dict(budget=3.0, min_reps=5, max_reps=50, warmup=2, system_reps=9)}

    def peak_transient_bytes(self, fn: Callable[[], object]) -> int | None:
        return rss_peak_transient_bytes(fn)

    fma_seconds = 0.1  # per fma_peak call (the median of 5 calls of the microbenchmark)

    def fma_peak(self, dtypes, reps: int) -> tuple[dict[torch.dtype, float], str]:
        """The best of ``reps`` measurements of ``cpu.fma_peak`` (each the median of its calls) with
        the instruction set the kernels use, on ``torch.get_num_threads()`` threads, for float32
        and float64 (the dtypes the microbenchmark has)."""
        if not cpu_kernels.available_isas():
            return {}, "not measured (the compiled CPU kernels, and with them the FMA microbenchmark, are not built)"
        isa, threads = cpu_kernels.current_isa(), torch.get_num_threads()
        peaks = {d: max(cpu_kernels.fma_peak(isa, d, threads, self.fma_seconds) for _ in range(reps))
                 for d in dtypes if d in (torch.float32, torch.float64)}
        return peaks, (f"{isa} microbenchmark, {threads} thread{'s' * (threads != 1)}, 12 chains of "
                       f"fused multiply-adds per thread, best of {reps} medians")

    def describe(self, busy: float | None) -> list[str]:
        kernels = cpu_kernels.current_isa() if cpu_kernels.available_isas() else "not built"
        return [f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch.get_num_threads() = "
                f"{torch.get_num_threads()}, {platform.system()} {platform.machine()}; {_busy_text(busy)}; "
                f"unshared's compiled CPU kernels: {kernels}"]

    def memory_note(self) -> str:
        return ("the process's resident-set high-water mark (`VmHWM`, reset through "
                "`/proc/self/clear_refs` before the step) minus its resident set before, after "
                "returning freed heap memory to the system: every allocation the step touches "
                "(PyTorch's allocator, huge-page buffers, BLAS scratch). Outputs and gradients "
                "count, pre-existing inputs/weights do not.")


class CudaDevice(Device):
    """The current CUDA device: CUDA events (the L2 cache overwritten before each timed call),
    memory from PyTorch's CUDA allocator statistics (:func:`cuda_peak_transient_bytes`)."""

    kind, title = "cuda", "CUDA"
    default_cases = tuple(f"{layer}-{batch}" for layer in DEEPFACE for batch in (32, 256))
    quick_cases = ("L6-32", "L4-256")
    default_providers = ("unshared-triton", "unshared-torch", "unfold+bmm", "jax")
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


@dataclass
class Roofline:
    """Rates measured on the device: matmul GFLOP/s per dtype (what a BLAS gets here), copy
    bandwidth in GB/s, and on the CPU the cores' FMA peak in GFLOP/s per dtype (``peak``; how it
    was measured, or why not, in ``peak_how``). The floor's compute rate is the FMA peak where it
    was measured, else the matmul rate, and never below the matmul rate: a microbenchmark that
    measured less than a BLAS reached was slowed down (other work on a shared machine), and the
    cores' limit is at least what was reached."""
    gflops: dict[torch.dtype, float]
    gbps: float
    peak: dict[torch.dtype, float] = field(default_factory=dict)
    peak_how: str = ""
    copies: int = 0  # copies the bandwidth is the best of (0: not said)

    @property
    def physical(self) -> bool:
        """Whether the floor is the machine's physical one (FMA peak and copy bandwidth)."""
        return bool(self.peak)

    def compute_rate(self, dtype: torch.dtype) -> float:
        """GFLOP/s of the floor's compute term: the FMA peak, else (or where higher) the matmul rate."""
        return max(self.peak.get(dtype, 0.0), self.gflops[dtype])

    def peak_below_matmul(self) -> list[torch.dtype]:
        """The dtypes whose measured FMA peak is below their matmul rate (the floor uses the latter)."""
        return [d for d, rate in self.peak.items() if d in self.gflops and rate < self.gflops[d]]

    def floor(self, case: Case, mode: str, dtype: torch.dtype) -> float:
        """Seconds: max(flops / :meth:`compute_rate`, bytes a step must move / bandwidth)."""
        return self._floor(case, mode, dtype, self.compute_rate(dtype))

    def matmul_floor(self, case: Case, mode: str, dtype: torch.dtype) -> float:
        """Seconds: max(flops / matmul rate, bytes a step must move / bandwidth): the floor as a
        BLAS would see it."""
        return self._floor(case, mode, dtype, self.gflops[dtype])

    def _floor(self, case: Case, mode: str, dtype: torch.dtype, gflops: float) -> float:
        return max(case.flops(mode) / (gflops * 1e9), case.bytes_moved(mode, itemsize(dtype)) / (self.gbps * 1e9))


def matmul_rate(device: Device, dtype: torch.dtype, reps: int) -> float:
    """GFLOP/s of an ``n x n @ n x n`` matmul in ``dtype`` (median; ``n = device.matmul_size``),
    on random data (zeros run faster on some GPUs)."""
    n, dev = device.matmul_size, device.torch_device
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    c = torch.empty(n, n, device=dev, dtype=dtype)
    seconds = measure(lambda: torch.mm(a, b, out=c), device.clock(), 0.0, reps, reps).median
    return 2 * n ** 3 / seconds / 1e9


def bandwidth(device: Device, reps: int) -> float:
    """GB/s of ``dst.copy_(src)`` on ``device.copy_mib`` MiB float32 tensors, counted as bytes
    read + written: the best of ``reps`` copies (the limit: other work only slows a copy down)."""
    src = torch.rand(device.copy_mib * MiB // 4, device=device.torch_device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # the pages touched once before timing
    seconds = min(device.clock()(lambda: dst.copy_(src), reps))
    return 2 * src.numel() * 4 / seconds / 1e9


#: copies the bandwidth is the best of, per repetition of the other roofline measurements
COPIES_PER_REP = 4


def measure_roofline(device: Device, dtypes, reps: int) -> Roofline:
    """The FMA peak first (on the CPU; before PyTorch's threads are busy with the matmul), then the
    matmul rate per dtype (``reps`` calls, median) and the copy bandwidth (best of
    ``COPIES_PER_REP * reps`` copies)."""
    peak, how = device.fma_peak(dtypes, reps)
    copies = COPIES_PER_REP * reps
    return Roofline({d: matmul_rate(device, d, reps) for d in dtypes}, bandwidth(device, copies), peak, how, copies)
