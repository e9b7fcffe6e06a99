"""``backend="auto"`` on CUDA: measure once, keep the fastest.

Which of the Triton kernels, the PyTorch backend (cuBLAS batched matmuls in bounded blocks) and the
one-shot plan (:mod:`.unfold`: one gather and one batched matmul per operation, when its
temporaries fit ``settings().one_shot_bytes``) is fastest depends on the shapes and the GPU: large
layers favour the kernels, small ones the plan with the fewest launches. So the first call for a
new key (geometry, dtype, batch-size bucket, weight layout, device) times every candidate that can
run, separately for the forward and for the backward (input and weight gradients), and keeps the
fastest for that key for the life of the process. The choice is
made where the tensors are real: inside the custom operator, never while ``torch.compile``
traces with fake tensors, and never during CUDA-graph capture (then the kernels that can run are
used, unmeasured and uncached). Candidates that fail (a Triton kernel that does not compile or
launch) are dropped with one warning that gives the reason.

``UNSHARED_MEASURE_BACKENDS=0`` in the environment, or :func:`measuring` ``(False)``, turns
measuring off: the first candidate that can run is used (Triton). :func:`clear_choices` forgets
the choices; :func:`choices` lists them.
"""
from __future__ import annotations

import math
import os
import statistics
import threading
import time
import warnings
from typing import Callable, Mapping

import torch

from .._utils import Geometry, empty_weight, is_kernel_major, memory_format_of

__all__ = ["fastest", "resolve", "failed", "measuring", "clear_choices", "choices", "CANDIDATES", "MEASURING"]

#: What ``auto`` chooses between on CUDA, in order of preference when nothing is measured.
CANDIDATES = ("triton", "torch", "unfold")
STAGES = ("forward", "backward")

_lock = threading.Lock()
_choices: dict[tuple, tuple[str, ...]] = {}  # key -> the candidates measured, fastest first
_warned: set[str] = set()
#: ``[measuring]``: whether ``auto`` measures (read it with :func:`measuring`; hot paths read ``MEASURING[0]``)
MEASURING = [os.environ.get("UNSHARED_MEASURE_BACKENDS", "1") != "0"]


def measuring(enabled: bool | None = None) -> bool:
    """Whether ``auto`` measures on CUDA; with an argument, set it (for the whole process).

    Example::

        >>> from unshared.backends import measuring
        >>> before = measuring()                 # True unless UNSHARED_MEASURE_BACKENDS=0
        >>> measuring(False), measuring()
        (False, False)
        >>> measuring(before) == before
        True
    """
    if enabled is not None:
        MEASURING[0] = bool(enabled)
    return MEASURING[0]


def clear_choices() -> None:
    """Forget every measured choice (the next call of each key measures again).

    Example::

        >>> from unshared.backends import choices, clear_choices
        >>> clear_choices()
        >>> choices()
        {}
    """
    with _lock:
        _choices.clear()


def choices() -> dict[str, str]:
    """The measured choices so far, ``{description of the key: backend}``.

    Example (on the CPU ``auto`` never measures, so nothing is recorded)::

        >>> import torch, unshared
        >>> from unshared.backends import choices, clear_choices
        >>> clear_choices()
        >>> _ = unshared.LocallyConnected1d(2, 3, 3, input_size=8)(torch.randn(4, 2, 8))
        >>> choices()
        {}
    """
    with _lock:
        return {_describe(key): ranking[0] for key, ranking in _choices.items()}


def _describe(key) -> str:
    geometry, dtype, bucket, kernel_major, device, stage = key
    g = Geometry.decode(list(geometry))
    return (f"{stage} {g.ndim}d in {g.in_channels}x{'x'.join(map(str, g.input_size))} -> "
            f"{g.out_channels}x{'x'.join(map(str, g.output_size))} kernel {g.kernel_size} stride {g.stride}"
            f"{' banks' if g.banks else ''} {str(dtype).replace('torch.', '')} batch<={bucket} "
            f"{'kernel-major' if kernel_major else 'contiguous'} on {device}")


def fastest(times: Mapping[str, float | BaseException]) -> tuple[str, dict[str, str]]:
    """The candidate with the smallest time, and the reasons of those that failed.

    ``times``: seconds, or the exception a candidate raised. Raises ``RuntimeError`` when every
    candidate failed. A pure function: this is the whole choice.
    """
    failures = {name: f"{type(t).__name__}: {t}" for name, t in times.items() if isinstance(t, BaseException)}
    timed = {name: t for name, t in times.items() if not isinstance(t, BaseException)}
    if not timed:
        raise RuntimeError("every backend failed: " + "; ".join(f"{n}: {r}" for n, r in failures.items()))
    return min(timed, key=lambda name: (timed[name], list(times).index(name))), failures


def _key(sample: torch.Tensor, weight: torch.Tensor, g: Geometry, stage: str) -> tuple:
    return (tuple(g.encode()), sample.dtype, _bucket(sample.shape[0]), is_kernel_major(weight), str(sample.device),
            stage)


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    """Median wall time of ``fn`` after one warm-up call (compilation, autotuning), synchronised."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _stage_call(module, stage: str, g: Geometry, n: int, dtype, device, kernel_major: bool, channels_last: bool):
    """A call of one stage of one backend on random tensors of this key's shapes and layouts."""
    x = torch.randn(n, g.in_channels, *g.input_size, dtype=dtype, device=device)
    fmt = torch.contiguous_format
    if channels_last and g.ndim in (2, 3):
        fmt = torch.channels_last if g.ndim == 2 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    shape = (*g.weight_leading, g.out_channels, g.in_channels // g.groups, *g.kernel_size)
    w = empty_weight(shape, g.ndim, kernel_major=kernel_major, dtype=dtype, device=device)
    w.normal_(0, 1 / math.sqrt(shape[g.ndim + 1] * g.kernel_volume))
    if stage == "forward":
        return lambda: module.forward(x, w, g)
    gy = torch.randn(n, g.out_channels, *g.output_size, dtype=dtype, device=device)
    return lambda: (module.input_grad(gy, w, g, fmt), module.weight_grad(x, gy, g, kernel_major))


def resolve(sample: torch.Tensor, weight: torch.Tensor, g: Geometry, stage: str,
            backends: Mapping[str, object] | None = None,
            timer: Callable[[Callable[[], object], torch.device], float] = _median_seconds) -> str:
    """The backend for ``stage`` (``"forward"`` or ``"backward"``) of this call: measured once per
    key, then remembered. ``sample``: the input or the output gradient (its batch size, dtype,
    device and memory format count); ``backends`` and ``timer`` are for tests (stand-ins)."""
    if backends is None:
        from .registry import BACKENDS as backends
    runnable = [name for name in CANDIDATES
                if name in backends and backends[name].can_run(sample, weight, g) is None]
    if not runnable:
        raise ValueError("no backend can compute this call")
    device, key = sample.device, _key(sample, weight, g, stage)
    with _lock:
        ranking = _choices.get(key, ())
    # measured (or fallen back after a failure): the fastest that can run this call (a larger batch
    # of the same bucket may not fit the one-shot plan's budget)
    known = next((name for name in ranking if name in runnable), None)
    if known is not None:
        return known
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if len(runnable) == 1 or not measuring() or capturing:
        return runnable[0]
    n, dtype, kernel_major = sample.shape[0], sample.dtype, is_kernel_major(weight)
    channels_last = memory_format_of(sample) != torch.contiguous_format
    times: dict[str, float | BaseException] = {}
    for name in runnable:
        try:
            call = _stage_call(backends[name], stage, g, n, dtype, device, kernel_major, channels_last)
            times[name] = timer(call, device)
        except Exception as error:  # a kernel that fails to compile or launch: not a candidate
            times[name] = error
    name, failures = fastest(times)
    ranking = tuple(sorted((c for c in times if c not in failures), key=lambda c: times[c]))  # stable: ties keep order
    for failed, reason in failures.items():
        if failed not in _warned:
            _warned.add(failed)
            warnings.warn(f"unshared: backend='auto' does not use the {failed} backend, which failed: {reason}; "
                          f"using {name} (backend={failed!r} raises the error)", RuntimeWarning, stacklevel=2)
    with _lock:
        _choices[key] = ranking
    return name


def failed(sample: torch.Tensor, weight: torch.Tensor, g: Geometry, stage: str, name: str,
           error: BaseException) -> str:
    """``name`` failed on a call that ``auto`` gave it: warn once, remember the PyTorch backend for
    this key, and return it."""
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"unshared: backend='auto' does not use the {name} backend, which failed: "
                      f"{type(error).__name__}: {error}; using torch (backend={name!r} raises the error)",
                      RuntimeWarning, stacklevel=3)
    with _lock:
        _choices[_key(sample, weight, g, stage)] = ("torch",)
    return "torch"
