"""Compiled CPU kernels (C sources in ``csrc/``, built with the package), called through ctypes.

The kernels gather each patch from the input as they go (zero padding by bounds: no padded copy,
no patch buffer) and keep register tiles sized for the thin matrices of locally connected layers:

- ``forward``: per output position, dot products along the patch's contiguous runs (a
  channels-last input and kernel-major filters make a kernel row one run of ``kernel_w * C``),
  the bias (when given) added as each sum is stored;
- ``weight_grad``: per position, outer products of ``grad_output`` and the patch, summed over the
  batch and written once (with shared banks, each bank is summed by one thread); when asked, also
  the per-position bias gradient, ``grad_output`` summed over the batch in the same work item;
- ``input_grad``: per input position, a gather over the (position, kernel offset) pairs whose
  patch holds it (no scatter, no atomics), vectors along the batch.

The instruction set is chosen at run time (AVX-512, AVX2+FMA, or portable vector code); force one
with :func:`use_isa` or ``UNSHARED_CPU_ISA=avx512|avx2|portable``. ``UNSHARED_CPU_LIBRARY=<path>``
(read at import) loads the kernels from another build, e.g. one with sanitizers (tests/test_sanitizer.py).
The C entry points trust no caller: each call passes every tensor's extent (the elements its
memory holds from the data pointer on), and C checks every offset it will compute against it, and
every bank index, before any kernel runs; a refused call raises ``ValueError``. Threads: ``torch.get_num_threads()``
per call (POSIX threads started and joined by the call; no OpenMP). float32 and float64;
float16/bfloat16 are left to the PyTorch backend (``can_run`` says so). Inputs whose channel
stride is not 1 are copied channels-last by the kernels first (small next to the weight).
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import math
import os
from pathlib import Path

import torch

from .._cache import CACHE, remember
from .._utils import Geometry, is_kernel_major, memory_format_of, public_to_storage_perm, storage_to_public_perm
from .buffers import pooled_buffer

__all__ = ["can_run", "forward", "input_grad", "weight_grad", "use_isa", "available_isas", "current_isa",
           "thread_pool", "use_thread_pool", "THREAD_POOLS",
           "library_path", "LIBRARY_NAME", "ISAS", "PATHS", "use_path", "fma_peak"]

#: The instruction sets of the kernels, in the library's numbering.
ISAS = ("portable", "avx2", "avx512")
#: The paths of forward and weight grad, in the library's numbering: chosen by shape ("auto"),
#: vectors along the channels of a patch, or along the output positions of a row (few channels).
PATHS = ("auto", "channels", "rows")
_PATH_INDEX = {name: i for i, name in enumerate(PATHS)}
ABI_VERSION = 6  # must match LC_ABI_VERSION in csrc/dispatch.c
_DTYPES = {torch.float32: 0, torch.float64: 1}
#: The refusals of the C entry points (csrc/unshared_cpu.h), by status.
_REFUSED = {2: "a size, the dtype or the instruction set is invalid",
            3: "the input (or its gradient) reaches past the memory it was given",
            4: "the output (or its gradient) reaches past the memory it was given",
            5: "the weight (or its gradient) reaches past the memory it was given",
            6: "a filter-bank index is out of range", 7: "a size or a coordinate overflows int64",
            8: "the bias (or its gradient) reaches past the memory it was given"}
#: Calls with fewer multiply-adds than this (~20 us of work) run on the calling thread alone:
#: starting and joining a thread costs tens of microseconds.
SERIAL_BELOW = 1 << 20
_ISA: contextvars.ContextVar[str | None] = contextvars.ContextVar("unshared_cpu_isa", default=None)
_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("unshared_cpu_path", default="auto")

#: computed inside the custom operator (not made of standard differentiable operators)
STANDARD_OPERATORS = False
#: ``forward(..., bias=)`` adds the bias as it stores y, and ``weight_grad(..., bias_grad=True)`` also
#: returns the per-position bias gradient, summed in the weight gradient's pass over ``gy``
FUSES_BIAS = True
_i64 = ctypes.c_int64


class _Call(ctypes.Structure):
    """``lc_call`` of ``csrc/unshared_cpu.h``."""
    _fields_ = [("n", _i64), ("groups", _i64), ("cg", _i64), ("og", _i64),
                ("inp", _i64 * 3), ("out", _i64 * 3), ("k", _i64 * 3), ("s", _i64 * 3), ("pad", _i64 * 3),
                ("dil", _i64 * 3), ("x", ctypes.c_void_p), ("xs", _i64 * 5), ("y", ctypes.c_void_p),
                ("ys", _i64 * 5), ("w", ctypes.c_void_p), ("kernel_major", _i64), ("bank", ctypes.c_void_p),
                ("banks", _i64), ("x_extent", _i64), ("y_extent", _i64), ("w_extent", _i64), ("bank_len", _i64),
                ("path", _i64), ("b", ctypes.c_void_p), ("b_shared", _i64), ("b_extent", _i64)]


#: The library's file name in the package, as setup.py builds it (no Python ABI suffix: it links no Python).
LIBRARY_NAME = "_cpu_kernels" + (".dll" if os.name == "nt" else ".so")


def library_path() -> Path | None:
    """The compiled kernels: ``UNSHARED_CPU_LIBRARY`` when set, else those installed next to the
    package (``unshared/_cpu_kernels.so``, ``.dll`` on Windows), or None."""
    if os.environ.get("UNSHARED_CPU_LIBRARY"):
        return Path(os.environ["UNSHARED_CPU_LIBRARY"])
    path = Path(__file__).resolve().parent.parent / LIBRARY_NAME
    return path if path.is_file() else None


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """The loaded library and None, or None and why it is not available."""
    path = library_path()
    if path is None:
        return None, ("the compiled CPU kernels are not built: no unshared/_cpu_kernels library next to the "
                      "package (a C compiler is needed at install time; reinstall unshared with one)")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        return None, f"the compiled CPU kernels at {path} could not be loaded: {error}"
    abi = lib.unshared_abi_version() if hasattr(lib, "unshared_abi_version") else None
    if abi != ABI_VERSION:
        return None, (f"the compiled CPU kernels at {path} were built from other sources (ABI {abi}, "
                      f"expected {ABI_VERSION}): reinstall unshared")
    for name in ("unshared_forward", "unshared_input_grad", "unshared_weight_grad"):
        getattr(lib, name).argtypes = [ctypes.POINTER(_Call), ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.unshared_isa_supported.argtypes = [ctypes.c_int]
    lib.unshared_thread_pool.argtypes = [ctypes.c_int]
    lib.unshared_fma_peak.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, _i64,
                                      ctypes.POINTER(ctypes.c_double), ctypes.POINTER(_i64)]
    lib.unshared_fma_peak.restype = ctypes.c_int
    return lib, None


# Loaded once, at import (a missing or broken library only removes this backend); plain module
# attributes, so that can_run stays traceable by torch.compile.
_LIB, _REASON = _load()


def available_isas() -> tuple[str, ...]:
    """The instruction sets this CPU runs, worst first (empty when the kernels are not built)."""
    lib = _LIB
    known = _SUPPORTED.get("isas")
    if known is None or known[0] is not lib:  # asked once per loaded library
        known = lib, () if lib is None else tuple(name for i, name in enumerate(ISAS) if lib.unshared_isa_supported(i))
        _SUPPORTED["isas"] = known
    return known[1]


_SUPPORTED: dict[str, tuple] = {}


def current_isa() -> str:
    """The instruction set calls use now: :func:`use_isa`'s, else ``UNSHARED_CPU_ISA``, else the best."""
    available = available_isas()
    name = _ISA.get() or os.environ.get("UNSHARED_CPU_ISA") or (available[-1] if available else "portable")
    if name not in available:
        raise ValueError(f"the CPU kernels cannot use isa={name!r} here: this CPU runs {available} "
                         f"(from use_isa() or UNSHARED_CPU_ISA)")
    return name


def _isa_index() -> int:
    """``ISAS.index(current_isa())``, kept in the one cache per library, :func:`use_isa` and
    environment value."""
    key = ("cpu isa", _LIB, _ISA.get(), os.environ.get("UNSHARED_CPU_ISA"))
    index = CACHE.get(key)
    if index is None:
        index = remember(key, ISAS.index(current_isa()))  # raises for an ISA this CPU lacks: nothing kept
    return index


@contextlib.contextmanager
def use_isa(name: str):
    """Run the CPU kernels with instruction set ``name`` (one of :data:`ISAS` that this CPU runs)
    inside a ``with`` block, in this thread only (for tests and comparisons)."""
    if name not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, got isa={name!r}")
    token = _ISA.set(name)
    try:
        current_isa()
        yield name
    finally:
        _ISA.reset(token)


@contextlib.contextmanager
def use_path(name: str):
    """Force the kernels' path of forward and weight grad (one of :data:`PATHS`) inside a ``with``
    block, in this thread only (for tests and comparisons; "auto" chooses by shape). A weight
    gradient with shared banks always takes the channel path."""
    if name not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got path={name!r}")
    token = _PATH.set(name)
    try:
        yield name
    finally:
        _PATH.reset(token)


def library() -> ctypes.CDLL:
    """The loaded kernel library (``RuntimeError`` saying why when it is not available)."""
    if _LIB is None:
        raise RuntimeError(_REASON)
    return _LIB


def can_run(x: torch.Tensor, w: torch.Tensor | None, g: Geometry) -> str | None:
    """``None`` when the compiled kernels can compute this call, else the reason why not."""
    if _LIB is None:
        return _REASON
    if x.device.type != "cpu":
        return f"the input is on {x.device.type}: the compiled kernels run on the CPU"
    if x.dtype not in _DTYPES:
        return (f"dtype {x.dtype} is not supported by the compiled kernels (float32, float64); "
                f"the PyTorch backend computes it")
    if w is not None and (w.dtype != x.dtype or w.device.type != "cpu"):
        return f"the weight ({w.dtype} on {w.device}) must match the input ({x.dtype} on cpu)"
    return None


# ----------------------------------------------------------------------------- launch

def _spatial3(values, fill: int) -> list[int]:
    """Per-dimension values of a 1d or 2d layer as three spatial dimensions (leading ``fill``)."""
    return [fill] * (3 - len(values)) + list(values)


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    """``(N, C, *spatial)`` strides as ``n, c, d, h, w`` (0 for the missing dimensions; the channel
    stride of a single channel is reported as 1, which is what it is)."""
    strides = t.stride()
    return (strides[0], 1 if t.shape[1] == 1 else strides[1], *(0,) * (5 - len(strides)), *strides[2:])


def _bank_array(banks: tuple[tuple[int, ...], ...], weight_grid: tuple[int, ...]) -> ctypes.Array:
    """The flat (row-major) bank of every output position, as plain int64 memory. (Not the cached
    tensor of :func:`unshared._utils.flat_bank_index`: that one may have been made while a tracer
    ran, as a fake tensor without data.)"""
    flat = [0]
    for coords, size in zip(banks, weight_grid):
        flat = [f * size + c for f in flat for c in coords]
    return (_i64 * len(flat))(*flat)


#: the kernels keep what they prepare for a geometry in its entry's ``state`` (see :mod:`.compute`)
PREPARES = True


def _prepare(g: Geometry, n: int, xs: tuple[int, ...], ys: tuple[int, ...], kernel_major: bool,
             banks) -> tuple:
    """``(lc_call template, multiply-adds)`` of calls with these sizes and strides."""
    pad = [lo for lo, _ in g.padding]
    template = _Call(n, g.groups, g.in_channels // g.groups, g.out_channels // g.groups,
                     (_i64 * 3)(*_spatial3(g.input_size, 1)), (_i64 * 3)(*_spatial3(g.output_size, 1)),
                     (_i64 * 3)(*_spatial3(g.kernel_size, 1)), (_i64 * 3)(*_spatial3(g.stride, 1)),
                     (_i64 * 3)(*_spatial3(pad, 0)), (_i64 * 3)(*_spatial3(g.dilation, 1)),
                     None, (_i64 * 5)(*xs), None, (_i64 * 5)(*ys), None, int(kernel_major),
                     None if banks is None else ctypes.addressof(banks), g.bank_count, 0, 0, 0,
                     0 if banks is None else len(banks))
    work = n * g.positions * g.out_channels * g.in_channels // g.groups * g.kernel_volume
    return template, work


def _launch(op: str, g: Geometry, n: int, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
            kernel_major: bool, state: dict | None) -> None:
    """Run ``unshared_<op>`` on ``x`` (input or its gradient), ``y`` (output or its gradient) and
    ``w``, whose data pointer starts the weight's (or its gradient's) memory, kernel-major or
    channel-major as ``kernel_major`` says; or with ``w`` a pair of that and a contiguous bias, added
    to y (forward: ``(O,)`` or ``(O, *output_size)``), or the bias gradient to write (weight grad:
    ``(O, *output_size)``). ``state``: what was prepared for ``g`` (the call templates per batch
    size, strides and weight layout, and the bank array), kept with it."""
    lib = _LIB
    if lib is None:
        raise RuntimeError(_REASON)
    state = {} if state is None else state
    key = (n, x.stride(), y.stride(), kernel_major)
    prepared = state.get(key)
    if prepared is None:
        banks = state.get("banks")
        if len(state) >= 64:  # (the bank array stays: calls in flight may point to it)
            state.clear()
            if banks is not None:
                state["banks"] = banks
        if banks is None and g.banks is not None:
            banks = state["banks"] = _bank_array(g.banks, g.weight_grid)  # lives as long as the templates
        prepared = state[key] = _prepare(g, n, _strides(x), _strides(y), kernel_major, banks)
    call = _Call.from_buffer_copy(prepared[0])  # a copy per call: threads may share a layer
    if type(w) is tuple:
        w, b = w
        call.b, call.b_shared = b.data_ptr(), b.dim() == 1
        call.b_extent = b.untyped_storage().nbytes() // b.element_size() - b.storage_offset()
    call.x, call.y, call.w = x.data_ptr(), y.data_ptr(), w.data_ptr()
    # the elements of each tensor's memory from its data pointer on (what C may address)
    call.x_extent = x.untyped_storage().nbytes() // x.element_size() - x.storage_offset()
    call.y_extent = y.untyped_storage().nbytes() // y.element_size() - y.storage_offset()
    call.w_extent = w.untyped_storage().nbytes() // w.element_size() - w.storage_offset()
    call.path = _PATH_INDEX[_PATH.get()]
    threads = 1 if prepared[1] < SERIAL_BELOW else torch.get_num_threads()
    key = ("cpu isa", lib, _ISA.get(), os.environ.get("UNSHARED_CPU_ISA"))
    isa = CACHE.get(key)
    status = getattr(lib, f"unshared_{op}")(ctypes.byref(call), _DTYPES[x.dtype],
                                             _isa_index() if isa is None else isa, threads)
    if status == 1:
        raise MemoryError(f"the compiled CPU kernels ran out of memory in {op} for {g}, batch {n}, {x.dtype}")
    if status:
        raise (ValueError if status in _REFUSED else RuntimeError)(
            f"the compiled CPU kernels refused {op} (status {status}: {_REFUSED.get(status, 'unknown')}) for {g}, "
            f"batch {n}, {x.dtype}")


def _weight_memory(w: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A tensor whose data pointer starts the weight's memory, and whether that memory is
    kernel-major (else channel-major: the public shape contiguous). As
    :func:`unshared._utils.weight_memory`, without making the permuted view (the kernels need only
    the pointer and the extent, which a permutation keeps); other strides are copied once. The
    layout is kept in the one cache per shape and strides."""
    key = ("kernel major", w.shape, w.stride())
    kernel_major = CACHE.get(key)
    if kernel_major is None:
        kernel_major = remember(key, is_kernel_major(w))
    if kernel_major or w.is_contiguous():
        return w, kernel_major
    return w.contiguous(), False


def _check_dtypes(op: str, first: torch.Tensor, second: torch.Tensor) -> torch.dtype:
    dtype = first.dtype
    if dtype != second.dtype or dtype not in _DTYPES:
        raise TypeError(f"cpu backend {op}: tensors must all be float32 or all float64, got "
                        f"{[str(first.dtype), str(second.dtype)]}")
    return dtype


# ----------------------------------------------------------------------------- the three operations

def forward(x: torch.Tensor, w: torch.Tensor, g: Geometry, state: dict | None = None,
            bias: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, C, *input_size)``, public weight -> ``(N, O, *output_size)`` in ``x``'s memory format,
    plus ``bias`` (``(O,)`` or ``(O, *output_size)``, of ``x``'s dtype) when given, added as y is
    stored. ``state``: what the kernels prepared for ``g`` (kept by its plan)."""
    dtype = x.dtype
    if dtype != w.dtype or dtype not in _DTYPES:
        _check_dtypes("forward", x, w)
    if bias is not None and (bias.dtype != dtype or bias.shape not in ((g.out_channels,), (g.out_channels, *g.output_size))):
        _check_dtypes("forward", x, bias)
        raise ValueError(f"cpu backend forward: bias must be ({g.out_channels},) or {(g.out_channels, *g.output_size)}, "
                         f"got bias of shape {tuple(bias.shape)}")
    n = x.shape[0]
    y = pooled_buffer((n, g.out_channels, *g.output_size), dtype=dtype, device=x.device,
                      memory_format=torch.contiguous_format if x.is_contiguous() else memory_format_of(x))
    if n == 0:
        return y
    key = ("kernel major", w.shape, w.stride())
    kernel_major = CACHE.get(key)
    memory, kernel_major = (w, kernel_major) if kernel_major else _weight_memory(w)
    _launch("forward", g, n, x, y, memory if bias is None else (memory, bias.contiguous()), kernel_major, state)
    return y


def input_grad(gy: torch.Tensor, w: torch.Tensor, g: Geometry,
               memory_format: torch.memory_format = torch.contiguous_format, state: dict | None = None) -> torch.Tensor:
    """Adjoint in the input: ``(N, O, *output_size)`` -> ``(N, C, *input_size)`` in ``memory_format``."""
    dtype = gy.dtype
    if dtype != w.dtype or dtype not in _DTYPES:
        _check_dtypes("input_grad", gy, w)
    n = gy.shape[0]
    gx = pooled_buffer((n, g.in_channels, *g.input_size), dtype=dtype, device=gy.device, memory_format=memory_format)
    if n == 0:
        return gx
    key = ("kernel major", w.shape, w.stride())
    kernel_major = CACHE.get(key)
    memory, kernel_major = (w, kernel_major) if kernel_major else _weight_memory(w)
    _launch("input_grad", g, n, gx, gy.contiguous() if 0 in gy.stride() else gy, memory, kernel_major, state)
    return gx


def weight_grad(x: torch.Tensor, gy: torch.Tensor, g: Geometry, kernel_major: bool = True,
                state: dict | None = None, bias_grad: bool = False):
    """Adjoint in the weight: ``x``, ``(N, O, *output_size)`` -> public-shaped weight gradient,
    laid out kernel-major or channel-major (as the weight it is the gradient of); shared banks sum
    their positions. With ``bias_grad``, ``(weight gradient, bias gradient)``: the gradient of a
    per-position bias, ``gy`` summed over the batch (``(O, *output_size)``; a shared bias's is its
    sum over the positions), computed by the kernels beside the weight gradient."""
    dtype = x.dtype
    if dtype != gy.dtype or dtype not in _DTYPES:
        _check_dtypes("weight_grad", x, gy)
    n = x.shape[0]
    layout = None if state is None else state.get(("weight layout", kernel_major))
    if layout is None:  # (the allocated shape, the permutation to the public shape, the public shape)
        shape = (*g.weight_leading, g.out_channels, g.in_channels // g.groups, *g.kernel_size)
        order = public_to_storage_perm(g.ndim) if kernel_major else range(len(shape))
        layout = (tuple(shape[i] for i in order), storage_to_public_perm(g.ndim) if kernel_major else None, shape)
        if state is not None:
            state[("weight layout", kernel_major)] = layout
    gw = pooled_buffer(layout[0], dtype=dtype, device=x.device)
    if layout[1] is not None:
        gw = gw.permute(layout[1])
    if n == 0 or math.prod(layout[2]) == 0:
        return (gw.zero_(), gy.sum(0).contiguous()) if bias_grad else gw.zero_()
    gy = gy.contiguous() if 0 in gy.stride() else gy  # an expanded gradient (of y.sum()): read as vectors
    if not bias_grad:
        _launch("weight_grad", g, n, x, gy, gw, kernel_major, state)  # gw's data pointer starts its memory
        return gw
    gb = torch.empty((g.out_channels, *g.output_size), dtype=dtype, device=x.device)
    _launch("weight_grad", g, n, x, gy, (gw, gb), kernel_major, state)
    return gw, gb


# The process-wide side of the kernels (their thread pool, the FMA peak): cpu_machine.py.
from .cpu_machine import THREAD_POOLS, fma_peak, thread_pool, use_thread_pool  # noqa: E402
