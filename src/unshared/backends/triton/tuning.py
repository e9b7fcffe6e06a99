"""Choosing a configuration per key and launching it cheaply (importing this imports no Triton).

On a GPU the first call of a key (kernel arguments bucketed as in :func:`launch`'s ``key``) times
every candidate (CUDA events, a few milliseconds each; candidates that fail to compile or launch
are skipped with their error), keeps the fastest, and records every time (:func:`timings`, for
benchmarks that tune the candidate lists). Later calls of the key look the choice up and launch
the compiled kernel directly with the argument values in order, skipping Triton's argument
binding and autotuning, as long as the argument specialization (integers divisible by 16 or equal
to 1, 16-byte aligned pointers) is one seen before; otherwise Triton's launch compiles the new
variant, which is then kept too. Nothing is measured while a CUDA graph is being captured (the
default candidate is used, uncached) and nothing synchronises the host after the first call.

Under the interpreter nothing is timed: the op's :data:`configs.INTERPRETER` configuration, or the
one :func:`forcing` sets (tests), is launched.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import threading
from collections import Counter
from typing import Callable

import torch

from . import configs
from .configs import Candidate

_lock = threading.Lock()
_chosen: dict[tuple, Candidate] = {}
_timings: dict[tuple, dict[str, float | str]] = {}
_compiled: dict[tuple, object] = {}
_forced: dict[str, Candidate] = {}
#: How each launch went: ``tuned`` (first call of a key), ``cached`` (choice looked up),
#: ``direct`` (compiled kernel launched without Triton's binding), ``unmeasured`` (capture,
#: interpreter, one candidate), ``fallback`` (the direct launch failed; Triton's path was used).
stats: Counter = Counter()
_direct = {"enabled": os.environ.get("UNSHARED_TRITON_DIRECT_LAUNCH", "1") != "0"}
_compile_only = {"enabled": False}


def compile_only(enabled: bool | None = None) -> bool:
    """Whether launches only compile every candidate (``kernel.warmup``: Triton's caches fill,
    nothing runs, outputs stay unwritten), for processes that compile ahead of a benchmark."""
    if enabled is not None:
        _compile_only["enabled"] = bool(enabled)
    return _compile_only["enabled"]


def direct_launch(enabled: bool | None = None) -> bool:
    """Whether cached launches call the compiled kernel directly; with an argument, set it."""
    if enabled is not None:
        _direct["enabled"] = bool(enabled)
    return _direct["enabled"]


@contextlib.contextmanager
def forcing(op: str, candidate: Candidate):
    """Use ``candidate`` for ``op`` inside the block (tests: every kernel family under the interpreter)."""
    previous = _forced.get(op)
    _forced[op] = candidate
    try:
        yield
    finally:
        if previous is None:
            _forced.pop(op, None)
        else:
            _forced[op] = previous


def clear() -> None:
    """Forget every choice, timing and compiled kernel."""
    with _lock:
        _chosen.clear()
        _timings.clear()
        _compiled.clear()
        stats.clear()


def chosen() -> dict[str, str]:
    """``{key: candidate}`` of the choices made so far."""
    with _lock:
        return {str(key): str(c) for key, c in _chosen.items()}


def timings() -> dict[str, dict[str, float | str]]:
    """``{key: {candidate: milliseconds, or the error}}`` of every key measured so far."""
    with _lock:
        return {str(key): dict(times) for key, times in _timings.items()}


def _specialization(values) -> tuple:
    """What Triton specializes a compiled kernel on, per argument: integers divisible by 16, equal
    to 1 or past 32 bits; pointers aligned to 16 bytes; constexprs by value."""
    spec = []
    for v in values:
        if isinstance(v, torch.Tensor):
            spec.append(v.data_ptr() % 16 == 0)
        elif isinstance(v, bool) or not isinstance(v, int):
            spec.append(v)
        else:
            spec.append((v % 16 == 0, v == 1, not -2**31 <= v < 2**31))
    return tuple(spec)


def _median_ms(run: Callable[[], object], budget_ms: float = 5.0) -> float:
    """Median time of ``run`` (CUDA events around each call) after one untimed call."""
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    reps = max(3, min(50, int(budget_ms / max(start.elapsed_time(end), 1e-3))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for s, e in events:
        s.record()
        run()
        e.record()
    events[-1][1].synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def launch(op: str, key: tuple, options: tuple[Candidate, ...], kernel_of: Callable[[Candidate], object],
           args: Callable[[Candidate], dict], grid_of: Callable[[Candidate], tuple[int, int]],
           reset: Callable[[], None] | None = None) -> None:
    """Launch ``op`` with the chosen candidate among ``options`` (measured at the first call of
    ``key``). ``args(c)``: every kernel argument by name (constexprs included) for candidate ``c``;
    ``reset()``: restores an accumulated output (atomics) after measuring."""
    if configs.interpreting():
        candidate = _forced.get(op, configs.INTERPRETER[op])
        stats["unmeasured"] += 1
        kernel_of(candidate)[grid_of(candidate)](**args(candidate), num_warps=candidate.num_warps,
                                                 num_stages=candidate.num_stages)
        return
    if compile_only():
        for candidate in (_forced[op],) if op in _forced else options:
            with contextlib.suppress(Exception):  # what fails here fails again, reported, when measured
                kernel_of(candidate).warmup(**args(candidate), grid=grid_of(candidate),
                                            num_warps=candidate.num_warps, num_stages=candidate.num_stages)
        return
    with _lock:
        candidate = _forced.get(op) or _chosen.get(key)
    if candidate is None:
        capturing = torch.cuda.is_current_stream_capturing()
        if capturing or len(options) == 1:
            stats["unmeasured"] += 1
            candidate = options[0]
        else:
            candidate = _measure(op, key, options, kernel_of, args, grid_of)
            if reset is not None:
                reset()
    else:
        stats["cached"] += 1
    _run(key, candidate, kernel_of(candidate), args(candidate), grid_of(candidate))


def _run(key, candidate: Candidate, kernel, named: dict, grid: tuple[int, int]) -> None:
    """One launch: the compiled kernel directly when this specialization was compiled before,
    else Triton's launch (which compiles it), remembering what it returns."""
    values = [named[name] for name in kernel.arg_names]
    spec = (key, candidate, grid, _specialization(values))
    compiled = _compiled.get(spec) if direct_launch() else None
    if compiled is not None:
        try:
            compiled[grid](*values)
            stats["direct"] += 1
            return
        except Exception:  # a Triton whose compiled-kernel call differs: use its own launch from now on
            stats["fallback"] += 1
            direct_launch(False)
    result = kernel[grid](**named, num_warps=candidate.num_warps, num_stages=candidate.num_stages)
    if result is not None and hasattr(result, "__getitem__"):
        with _lock:
            if len(_compiled) > 4096:
                _compiled.clear()
            _compiled[spec] = result


def _measure(op, key, options, kernel_of, args, grid_of) -> Candidate:
    times: dict[str, float | str] = {}
    best, best_ms = None, float("inf")
    for candidate in options:
        kernel, named, grid = kernel_of(candidate), args(candidate), grid_of(candidate)
        try:
            ms = _median_ms(lambda: kernel[grid](**named, num_warps=candidate.num_warps,
                                                 num_stages=candidate.num_stages))
        except Exception as error:  # out of resources, a compile error: not a candidate
            times[str(candidate)] = f"{type(error).__name__}: {str(error)[:200]}"
            continue
        times[str(candidate)] = ms
        if ms < best_ms:
            best, best_ms = candidate, ms
    if best is None:
        raise RuntimeError(f"every Triton configuration of {op} failed: " + "; ".join(map(str, times.values())))
    stats["tuned"] += 1
    with _lock:
        _chosen[key] = best
        _timings[key] = times
    return best
