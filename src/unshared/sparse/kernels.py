"""The three operations of a sparsely connected layer on plain tensors, two ways.

With ``x`` ``(N, C, in_features)``, ``w`` ``(nnz, O, C)``, ``gy`` ``(N, O, out_features)`` and the
checked pairs ``(2, nnz)``:

- ``forward(x, w)`` ``(N, O, out_features)``: ``y[n, o, j] = sum over pairs e = (i, j), c of w[e, o, c] x[n, c, i]``;
- ``input_grad(gy, w)`` ``(N, C, in_features)``: its adjoint in ``x``;
- ``weight_grad(x, gy)`` ``(nnz, O, C)``: its adjoint in ``w``.

``"cpu"``: the compiled kernels of ``csrc/sparse.c`` (float32, float64), on the plan of
:func:`~.connectivity.plan`, their large outputs from the backends' pool of touched buffers
(:func:`unshared.backends.buffers.pooled_buffer`, as the locally connected kernels' outputs).
``"torch"``: standard operators (``index_select``, broadcast products or ``einsum``, ``index_add``)
over chunks of connections, so that no step holds more than about :data:`CHUNK` gathered elements;
differentiable, any device and dtype (float16/bfloat16 computed in float32).
``"auto"``: ``"cpu"`` where it runs, else ``"torch"``.
"""
from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from ..backends import cpu
from ..backends.buffers import pooled_buffer
from . import connectivity as K

__all__ = [
    "ABI_VERSION",
    "BACKENDS",
    "CHUNK",
    "SMALL_FILTERS",
    "can_run_compiled",
    "forward",
    "input_grad",
    "weight_grad",
]

BACKENDS = ("auto", "cpu", "torch")
#: most elements of a gathered chunk on the standard-operator path
CHUNK = 1 << 22
ABI_VERSION = 4  # SP_ABI_VERSION of csrc/sparse.c
_DTYPES = {torch.float32: 0, torch.float64: 1}
_i64, _p = ctypes.c_int64, ctypes.c_void_p
_REFUSED = {2: "a size, a stride or the dtype is invalid", 3: "the input (or its gradient) reaches past its memory",
            4: "the output (or its gradient) reaches past its memory", 5: "the weight reaches past its memory",
            6: "a run or slot of the connectivity plan is out of range", 7: "a size overflows int64"}


class _Call(ctypes.Structure):
    """``sp_call`` of ``csrc/sparse.c``."""
    _fields_ = [("n", _i64), ("c", _i64), ("o", _i64), ("inp", _i64), ("out", _i64), ("nnz", _i64),
                ("x", _p), ("xs", _i64 * 3), ("y", _p), ("ys", _i64 * 3), ("w", _p),
                ("x_extent", _i64), ("y_extent", _i64), ("w_extent", _i64), ("row", _p), ("runs", _p),
                ("nruns", _i64), ("col", _p), ("slots", _p), ("blocks", _i64), ("block_size", _i64)]


def _load():
    try:
        lib = cpu.library()
    except RuntimeError as error:
        return None, str(error)
    if not hasattr(lib, "unshared_sparse_abi_version") or lib.unshared_sparse_abi_version() != ABI_VERSION:
        return None, "the compiled CPU kernels were built without csrc/sparse.c of this version: reinstall unshared"
    for name in ("forward", "input_grad", "weight_grad"):
        getattr(lib, f"unshared_sparse_{name}").argtypes = [ctypes.POINTER(_Call), ctypes.c_int, ctypes.c_int,
                                                             ctypes.c_int]
    return lib, None


_LIB, _REASON = _load()


def can_run_compiled(a: Tensor, b: Tensor) -> str | None:
    """``None`` when the compiled kernels compute a call on ``a`` and ``b``, else why not."""
    if _LIB is None:
        return _REASON
    if a.device.type != "cpu" or b.device.type != "cpu":
        return f"tensors on {a.device.type}: the compiled kernels run on the CPU"
    if a.dtype not in _DTYPES or b.dtype != a.dtype:
        return f"dtypes {a.dtype} and {b.dtype}: the compiled kernels take float32 or float64, both the same"
    return None


def _extent(t: Tensor) -> int:
    return t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()


def _launch(op: str, pairs: Tensor, in_features: int, out_features: int, x: Tensor, y: Tensor, w: Tensor) -> None:
    """``unshared_sparse_<op>`` on x ``(N, C, in)`` (stride 1 along features), y ``(N, O, out)``
    and the weight ``w`` ``(nnz, O, C)`` (contiguous)."""
    plan = K.plan(pairs, in_features, out_features)
    n, c, o = x.shape[0], x.shape[1], y.shape[1]
    call = _Call(n, c, o, in_features, out_features, pairs.shape[1], x.data_ptr(), (_i64 * 3)(*x.stride()),
                 y.data_ptr(), (_i64 * 3)(*y.stride()), w.data_ptr(), _extent(x), _extent(y), _extent(w),
                 plan.row.data_ptr(), plan.runs.data_ptr(), len(plan.runs), plan.col.data_ptr(),
                 plan.slots.data_ptr(), -(-in_features // plan.block_size), plan.block_size)
    work = n * c * o * pairs.shape[1]
    threads = 1 if work < cpu.SERIAL_BELOW else torch.get_num_threads()
    status = getattr(_LIB, f"unshared_sparse_{op}")(ctypes.byref(call), _DTYPES[x.dtype],
                                                     cpu.ISAS.index(cpu.current_isa()), threads)
    if status:
        raise (MemoryError if status == 1 else ValueError)(
            f"the compiled sparse kernels refused {op} (status {status}: {_REFUSED.get(status, 'out of memory')}) "
            f"for in_features={in_features}, out_features={out_features}, nnz={pairs.shape[1]}, batch {n}")


def _rows(t: Tensor) -> Tensor:
    """``t`` with stride 1 along its last dimension and non-negative strides."""
    return t if t.stride(-1) == 1 and min(t.stride()) >= 0 else t.contiguous()


def _compiled(backend: str, a: Tensor, b: Tensor, pairs: Tensor) -> bool:
    if backend == "torch" or pairs.shape[1] == 0 or a.shape[0] == 0:
        return False
    reason = can_run_compiled(a, b)
    if reason is not None and backend == "cpu":
        raise ValueError(f"sparsely_connected: backend='cpu' cannot run here: {reason}")
    return reason is None


def _chunks(pairs: Tensor, per_connection: int):
    """Slices of the connections holding at most :data:`CHUNK` gathered elements each."""
    step = max(1, CHUNK // max(1, per_connection))
    return [slice(s, s + step) for s in range(0, pairs.shape[1], step)]


def _wide(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _add_at(t: Tensor, index: Tensor, part: Tensor) -> Tensor:
    """``t.index_add(2, index, part)``: in place where nothing records or traces (``t`` is the
    caller's fresh accumulator: one chunk after another, no copy of it per chunk); as
    ``scatter_add`` under ``torch.jit.trace`` (the TorchScript ONNX exporter refuses ``index_add``
    with repeated indices, ``ScatterElements`` with ``reduction="add"`` expresses it)."""
    if torch.jit.is_tracing():
        return t.scatter_add(2, index.view(1, 1, -1).expand(part.shape), part)
    if _plain(t, part):
        return t.index_add_(2, index, part)
    return t.index_add(2, index, part)


def _plain(*tensors: Tensor) -> bool:
    """Eager, untraced, and no gradient recorded for ``tensors``."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) and \
        all(type(t) is Tensor or type(t) is torch.nn.Parameter for t in tensors)


#: Most filter elements (out x in channels) for which the standard-operator path mixes channels by
#: broadcast products, one channel at a time, rather than by ``einsum``: an ``einsum`` over many
#: connections with small filters runs as a batched matmul of tiny matrices, slow backward.
SMALL_FILTERS = 64


def _mix(a: Tensor, w: Tensor, to_out: bool) -> Tensor:
    """Per connection, ``a`` ``(N, C, e)`` through ``w`` ``(e, O, C)`` -> ``(N, O, e)``
    (``to_out``), or ``a`` ``(N, O, e)`` through its transpose -> ``(N, C, e)``."""
    _e, o, c = w.shape
    if o * c == 1:
        return a * w[:, 0, 0]
    if o * c > SMALL_FILTERS:
        return torch.einsum("nce,eoc->noe" if to_out else "noe,eoc->nce", a, w)
    if to_out:
        return sum(a[:, i:i + 1] * w[:, :, i].t() for i in range(c))
    return sum(a[:, i:i + 1] * w[:, i, :].t() for i in range(o))


def _propagate(a: Tensor, w: Tensor, pairs: Tensor, features: int, to_out: bool) -> Tensor:
    """The standard-operator path: ``a`` ``(N, C, in_features)`` gathered at each connection's input,
    mixed and added at its output -> ``(N, O, features)`` (``to_out``); or ``a`` ``(N, O,
    out_features)`` the other way -> ``(N, C, features)``."""
    wide_a, wide_w = _wide(a), _wide(w)
    gather, scatter = (pairs[0], pairs[1]) if to_out else (pairs[1], pairs[0])
    out = wide_a.new_zeros(a.shape[0], w.shape[1] if to_out else w.shape[2], features)
    for s in _chunks(pairs, a.shape[0] * max(w.shape[1], w.shape[2])):
        out = _add_at(out, scatter[s], _mix(wide_a.index_select(2, gather[s]), wide_w[s], to_out))
    return out.to(a.dtype)


def forward(x: Tensor, w: Tensor, pairs: Tensor, in_features: int, out_features: int, backend: str = "auto") -> Tensor:
    """``(N, C, in_features)`` -> ``(N, O, out_features)``."""
    if _compiled(backend, x, w, pairs):
        y = pooled_buffer((x.shape[0], w.shape[1], out_features), dtype=x.dtype)
        _launch("forward", pairs, in_features, out_features, _rows(x), y, w.contiguous())
        return y
    return _propagate(x, w, pairs, out_features, True)


def input_grad(gy: Tensor, w: Tensor, pairs: Tensor, in_features: int, out_features: int,
               backend: str = "auto") -> Tensor:
    """``(N, O, out_features)`` -> ``(N, C, in_features)``."""
    if _compiled(backend, gy, w, pairs):
        gx = pooled_buffer((gy.shape[0], w.shape[2], in_features), dtype=gy.dtype)
        _launch("input_grad", pairs, in_features, out_features, gx, gy, w.contiguous())
        return gx
    return _propagate(gy, w, pairs, in_features, False)


def weight_grad(x: Tensor, gy: Tensor, pairs: Tensor, in_features: int, out_features: int,
                backend: str = "auto") -> Tensor:
    """``(N, C, in_features)``, ``(N, O, out_features)`` -> ``(nnz, O, C)``, contiguous on either path."""
    nnz, o, c = pairs.shape[1], gy.shape[1], x.shape[1]
    if _compiled(backend, x, gy, pairs):
        gw = pooled_buffer((nnz, o, c), dtype=x.dtype)
        _launch("weight_grad", pairs, in_features, out_features, _rows(x), gy, gw)
        return gw
    gw = torch.empty(nnz, o, c, dtype=x.dtype, device=x.device)
    xw, gyw = _wide(x), _wide(gy)
    for s in _chunks(pairs, x.shape[0] * (c + o + (c * o if c * o <= SMALL_FILTERS else 0))):
        xs, gs = xw.index_select(2, pairs[0, s]), gyw.index_select(2, pairs[1, s])
        if o * c > SMALL_FILTERS:
            gw[s] = torch.einsum("nce,noe->eoc", xs, gs)
        else:
            gw[s] = (gs.unsqueeze(2) * xs.unsqueeze(1)).sum(0).permute(2, 0, 1)
    return gw
