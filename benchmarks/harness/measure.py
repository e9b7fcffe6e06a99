"""How a step is measured: repeated timings (median and quartiles) and its peak transient memory
(CPU: the process's resident-set high-water mark; CUDA: PyTorch's allocator statistics)."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from unshared.backends import release_pooled_buffers

Clock = Callable[[Callable[[], object], int], list[float]]  # (step, repetitions) -> seconds of each


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Timing:
    median: float
    q1: float
    q3: float
    reps: int


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


def result_bytes(result) -> int:
    """Storage bytes of the tensor(s) a step returns (each storage once)."""
    tensors = result if isinstance(result, tuple) else (result,)
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in tensors if isinstance(t, torch.Tensor)}.values())


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _release_free_heap() -> None:
    """Give freed heap memory back to the system (glibc's ``malloc_trim``), so that a step's
    allocations show up in the resident set instead of reusing memory freed earlier."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_peak_transient_bytes(fn: Callable[[], object]) -> int | None:
    """Peak resident memory of the process during one call of ``fn``, above what it held before
    (Linux: ``VmHWM`` after resetting it through ``/proc/self/clear_refs``; ``None`` elsewhere).

    It sees every allocation the step touches, whoever makes it (PyTorch's allocator, huge-page
    mappings, BLAS scratch, unshared's pool of CPU buffers, emptied first so that the step's
    pooled outputs and gradients count), through the very code path users run. Pre-existing
    tensors do not count; the returned ones (outputs, gradients) do, since they are alive at the end.
    """
    try:
        gc.collect()
        release_pooled_buffers()
        _release_free_heap()
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        result = fn()
        peak = _status_kib("VmHWM")
        del result
    except (OSError, KeyError, ValueError):
        return None
    return max(0, peak - before) * 1024


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
