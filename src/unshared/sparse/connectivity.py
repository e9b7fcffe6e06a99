"""Connectivity of a sparsely connected layer: the three forms users give, their checks, and the
plan the kernels walk.

- :func:`as_pairs`: a ``(2, nnz)`` integer tensor of ``(input index, output index)`` pairs, a
  boolean ``(in_features, out_features)`` mask (tensor or array) or a SciPy sparse matrix of that
  shape -> a ``(2, nnz)`` int64 tensor.
- :func:`check_pairs`: indices in range, no pair twice; errors name the offending pair.
- :func:`plan`: the connections as *runs* (consecutive inputs joined to one output by consecutive
  weights) listed by output (CSR), and the connections listed by input (CSR): what the compiled
  kernels read. Kept on the connectivity tensor itself, keyed by its version counter and sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BLOCK", "Plan", "as_pairs", "check_pairs", "checked", "plan", "sort_order", "sort_pairs"]

#: inputs per block of the input gradient (a block's rows of ``gx`` stay in cache while summed)
BLOCK = 2048


def _describe(value) -> str:
    return f"{type(value).__module__}.{type(value).__name__}" if not isinstance(value, Tensor) else \
        f"a {value.dtype} tensor of shape {tuple(value.shape)}"


def as_pairs(connectivity, in_features: int | None = None, out_features: int | None = None,
             name: str = "SparselyConnected") -> Tensor:
    """``connectivity`` in any accepted form -> ``(2, nnz)`` int64 pairs ``(input, output)``, in
    the given order (a mask or SciPy matrix: row-major, by input). Masks and matrices must have
    shape ``(in_features, out_features)`` where those are given."""
    if hasattr(connectivity, "tocoo") and not isinstance(connectivity, Tensor):  # SciPy sparse
        coo = connectivity.tocoo()
        _check_shape(tuple(coo.shape), in_features, out_features, name, "SciPy sparse matrix")
        pairs = torch.stack([torch.as_tensor(coo.row, dtype=torch.int64), torch.as_tensor(coo.col, dtype=torch.int64)])
        order = torch.argsort(pairs[0] * max(coo.shape[1], 1) + pairs[1], stable=True)
        return pairs[:, order]
    if not isinstance(connectivity, Tensor) and hasattr(connectivity, "__array__"):
        connectivity = torch.as_tensor(connectivity)
    if not isinstance(connectivity, Tensor):
        raise TypeError(f"{name}: connectivity must be a (2, nnz) integer tensor, a boolean (in_features, "
                        f"out_features) mask or a SciPy sparse matrix, got {_describe(connectivity)}")
    if connectivity.dtype == torch.bool:
        if connectivity.dim() != 2:
            raise ValueError(f"{name}: a boolean connectivity mask must be 2-d (in_features, out_features), "
                             f"got shape {tuple(connectivity.shape)}")
        _check_shape(tuple(connectivity.shape), in_features, out_features, name, "boolean mask")
        return connectivity.nonzero().t().contiguous()
    if connectivity.is_floating_point() or connectivity.is_complex():
        raise TypeError(f"{name}: connectivity pairs must be an integer tensor (or a boolean mask), got "
                        f"dtype {connectivity.dtype}")
    if connectivity.dim() != 2 or connectivity.shape[0] != 2:
        raise ValueError(f"{name}: connectivity pairs must have shape (2, nnz) (row 0: input index, row 1: "
                         f"output index), got shape {tuple(connectivity.shape)}")
    return connectivity.to(torch.int64)


def _check_shape(shape, in_features, out_features, name, what) -> None:
    expected = (in_features, out_features)
    if any(e is not None and s != e for s, e in zip(shape, expected)):
        raise ValueError(f"{name}: the {what} must have shape (in_features, out_features) = {expected}, "
                         f"got {shape}")


def check_pairs(pairs: Tensor, in_features: int, out_features: int, name: str = "SparselyConnected") -> None:
    """``ValueError`` naming the first pair with an index out of range (or negative) and the first
    pair that repeats an earlier one."""
    if pairs.numel() == 0:
        return
    src, dst = pairs[0], pairs[1]
    bad = (src < 0) | (src >= in_features) | (dst < 0) | (dst >= out_features)
    if bad.any():
        k = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name}: connection {k}, (input {int(src[k])}, output {int(dst[k])}), is out of range "
                         f"for in_features={in_features}, out_features={out_features}")
    key = src * out_features + dst
    order = torch.argsort(key, stable=True)
    same = key[order][1:] == key[order][:-1]
    if same.any():
        t = int(same.nonzero()[0, 0])
        first, again = int(order[t]), int(order[t + 1])
        raise ValueError(f"{name}: connection {again}, (input {int(src[again])}, output {int(dst[again])}), repeats "
                         f"connection {first}; each pair may appear once")


def sort_order(pairs: Tensor, in_features: int) -> Tensor:
    """The permutation that sorts the pairs by output, then input (the order in which an output's
    consecutive inputs become one run of consecutive weights)."""
    return torch.argsort(pairs[1] * max(in_features, 1) + pairs[0], stable=True)


def sort_pairs(pairs: Tensor, in_features: int) -> Tensor:
    """The pairs in :func:`sort_order`."""
    return pairs[:, sort_order(pairs, in_features)].contiguous()


@dataclass(frozen=True)
class Plan:
    """What the compiled kernels walk (int64, on the CPU): ``row`` ``(out + 1,)`` and ``runs``
    ``(R, 4)`` = (input start, edge start, length, output), by output (forward, weight gradient);
    ``col`` ``(in + 1,)`` and ``slots`` ``(nnz, 2)`` = (edge, output), by input (input gradient,
    threads over blocks of ``block_size`` inputs)."""
    row: Tensor
    runs: Tensor
    col: Tensor
    slots: Tensor
    block_size: int


def _build(pairs: Tensor, in_features: int, out_features: int, block_size: int) -> Plan:
    src, dst = pairs[0].cpu(), pairs[1].cpu()
    nnz = src.numel()
    order = torch.argsort(dst * max(in_features, 1) + src, stable=True)
    s, d, e = src[order], dst[order], order
    brk = torch.ones(nnz, dtype=torch.bool)
    brk[1:] = ~((s[1:] == s[:-1] + 1) & (d[1:] == d[:-1]) & (e[1:] == e[:-1] + 1))
    starts = brk.nonzero().squeeze(1)
    lengths = torch.diff(starts, append=torch.tensor([nnz]))
    runs = torch.stack([s[starts], e[starts], lengths, d[starts]], 1).contiguous()
    row = torch.zeros(out_features + 1, dtype=torch.int64)
    row[1:] = torch.cumsum(torch.bincount(d[starts], minlength=out_features), 0)
    by_input = torch.argsort(src * max(out_features, 1) + dst, stable=True)
    slots = torch.stack([by_input, dst[by_input]], 1).contiguous()
    col = torch.zeros(in_features + 1, dtype=torch.int64)
    col[1:] = torch.cumsum(torch.bincount(src, minlength=in_features), 0)
    return Plan(row, runs, col, slots, block_size)


def _memo_key(pairs: Tensor, *sizes) -> tuple | None:
    """What a result remembered on ``pairs`` depends on; None for a tensor without storage of its
    own (wrapped by a ``torch.func`` transform): nothing is remembered then."""
    try:
        return (pairs._version, pairs.data_ptr(), tuple(pairs.shape), *sizes)
    except RuntimeError:
        return None


def plan(pairs: Tensor, in_features: int, out_features: int, block_size: int = BLOCK) -> Plan:
    """The :class:`Plan` of checked ``pairs``, built once per connectivity tensor (kept on it and
    rebuilt when it is modified in place)."""
    key = _memo_key(pairs, in_features, out_features, block_size)
    kept = getattr(pairs, "_unshared_sparse_plan", None)
    if key is not None and kept is not None and kept[0] == key:
        return kept[1]
    built = _build(pairs, in_features, out_features, block_size)
    try:
        pairs._unshared_sparse_plan = (key, built)
    except (AttributeError, RuntimeError):  # a tensor that keeps no attributes: built every call
        pass
    return built


def checked(pairs: Tensor, in_features: int, out_features: int, name: str = "sparsely_connected") -> None:
    """:func:`check_pairs`, once per connectivity tensor and sizes (remembered on the tensor)."""
    key = _memo_key(pairs, in_features, out_features)
    if key is not None and getattr(pairs, "_unshared_sparse_checked", None) == key:
        return
    check_pairs(pairs, in_features, out_features, name)
    try:
        pairs._unshared_sparse_checked = key
    except (AttributeError, RuntimeError):
        pass
