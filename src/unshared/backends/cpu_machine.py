"""The process-wide side of the compiled CPU kernels: the pool their threads come from, and the
FMA peak of the cores they run on (the benchmarks' compute limit). Re-exported by :mod:`.cpu`."""
from __future__ import annotations

import contextlib
import ctypes
import time

import torch

from .cpu import ISAS, available_isas, current_isa, library

__all__ = ["THREAD_POOLS", "thread_pool", "use_thread_pool", "fma_peak"]

_FMA_DTYPES = {torch.float32: 0, torch.float64: 1}

#: The thread pools the kernels can run on: the OpenMP runtime PyTorch has loaded (its team, the
#: default), or threads of their own started per call.
THREAD_POOLS = ("pthreads", "openmp")


def thread_pool() -> str:
    """The pool the kernels' threads come from: ``"openmp"`` (the OpenMP runtime that PyTorch loaded:
    the threads of PyTorch's own parallel ops) or ``"pthreads"`` (started per call; where no such
    runtime is loaded, or :func:`use_thread_pool` asked). ``torch.set_num_threads`` sets how many."""
    return THREAD_POOLS[library().unshared_thread_pool(-1)]


_POOL_CHOICE = ["openmp"]  # what the library was last asked for (it starts with OpenMP)


@contextlib.contextmanager
def use_thread_pool(name: str):
    """Run the kernels on pool ``name`` (one of :data:`THREAD_POOLS`) inside a ``with`` block, in
    every thread (a process-wide setting, for comparisons: the default, ``"openmp"``, is the one
    that does not fight PyTorch's own threads for the cores)."""
    if name not in THREAD_POOLS:
        raise ValueError(f"pool must be one of {THREAD_POOLS}, got pool={name!r}")
    lib, before = library(), _POOL_CHOICE[0]
    lib.unshared_thread_pool(THREAD_POOLS.index(name))
    _POOL_CHOICE[0] = name
    try:
        yield thread_pool()
    finally:
        lib.unshared_thread_pool(THREAD_POOLS.index(before))
        _POOL_CHOICE[0] = before


# ----------------------------------------------------------------------------- FMA peak

def _fma_run(isa: str, dtype: torch.dtype, threads: int, iterations: int) -> tuple[float, int]:
    """One call of the FMA microbenchmark (``csrc/peak.c``): ``threads`` threads, each running 12
    independent chains of vector fused multiply-adds ``acc = acc * 0.5 + 1`` of ``isa``'s width in
    ``dtype`` for ``iterations`` steps. Returns the checksum of the final values and the flops done."""
    lib = library()
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, got isa={isa!r}")
    if isa not in available_isas():
        raise ValueError(f"the CPU kernels cannot use isa={isa!r} here: this CPU runs {available_isas()}")
    if dtype not in _FMA_DTYPES:
        raise ValueError(f"the FMA microbenchmark runs float32 and float64, got dtype={dtype}")
    if not 1 <= threads <= 256 or iterations < 0:
        raise ValueError(f"need 1 <= threads <= 256 and iterations >= 0, got {threads=}, {iterations=}")
    checksum, flops = ctypes.c_double(), ctypes.c_int64()
    status = lib.unshared_fma_peak(ISAS.index(isa), _FMA_DTYPES[dtype], threads, iterations,
                                   ctypes.byref(checksum), ctypes.byref(flops))
    if status:
        raise RuntimeError(f"the FMA microbenchmark failed (status {status}: "
                           f"{'out of memory or threads' if status == 1 else 'refused'})")
    return checksum.value, flops.value


def fma_peak(isa: str | None = None, dtype: torch.dtype = torch.float32, threads: int | None = None,
             seconds: float = 0.2) -> float:
    """The measured FMA peak of this CPU in GFLOP/s: the rate of the compiled microbenchmark
    (``csrc/peak.c``: 12 independent chains of vector fused multiply-adds per thread, nothing but
    FMAs) with instruction set ``isa`` (default: :func:`current_isa`) in ``dtype`` (float32 or
    float64) on ``threads`` threads (default: ``torch.get_num_threads()``); a multiply-add counts 2
    flops. Each call is timed with ``time.perf_counter``; the rate is that of the median of several
    calls sized to take about ``seconds`` together. The benchmarks' roofline floor uses it as the
    cores' compute limit (``benchmarks/README.md``).

    Raises ``ValueError`` for an instruction set this CPU lacks or an unknown one, ``RuntimeError``
    when the kernels are not built."""
    library()
    isa = current_isa() if isa is None else isa
    threads = torch.get_num_threads() if threads is None else threads
    _fma_run(isa, dtype, threads, 0)  # checks the arguments

    def timed(iterations: int) -> tuple[float, int]:
        start = time.perf_counter()
        _, flops = _fma_run(isa, dtype, threads, iterations)
        return time.perf_counter() - start, flops

    runs = 5
    per_run, iterations = max(seconds, 1e-3) / (runs + 1), 1 << 12
    elapsed, _ = timed(iterations)
    while elapsed < per_run / 4:  # calibrate: the first calls also warm the cores up
        iterations *= 4 if elapsed < per_run / 64 else 2
        elapsed, _ = timed(iterations)
    for _ in range(3):
        iterations = max(1, int(iterations * per_run / elapsed))
        samples = sorted(timed(iterations) for _ in range(runs))
        elapsed, flops = samples[runs // 2]
        if elapsed >= per_run / 2:  # else the calibration was slowed down (thread starts, other work): again
            break
    return flops / elapsed / 1e9
