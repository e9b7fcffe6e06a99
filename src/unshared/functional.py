"""Functional locally connected layers: ``locally_connected1d/2d/3d`` (and :func:`locally_connected`,
any dimension), with optional shared filter banks, and :func:`low_rank_locally_connected`.

Each validates its arguments (errors name the offending values), applies non-zero padding modes,
then dispatches to a backend (:func:`unshared.backends.choose_backend`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _calls as C
from . import _utils as U
from .backends import BACKENDS, check_backend_name, choose_backend, ops

__all__ = ["locally_connected", "locally_connected1d", "locally_connected2d", "locally_connected3d",
           "low_rank_locally_connected"]

_WEIGHT_LAYOUT = "*output_size, out_channels, in_channels // groups, *kernel_size"


def _finish(y: Tensor, bias: Tensor | None, unbatched: bool) -> Tensor:
    """Add the bias (shared, or per position)."""
    if bias is not None:
        y = y + (bias.view(-1, *(1,) * (y.dim() - 2)) if bias.dim() == 1 else bias)
    return y.squeeze(0) if unbatched else y


def _locally_connected(nd: int, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                       backend, banks, name: str) -> Tensor:
    coords = None
    if banks is not None:
        C.check_tensors(name, nd, input, {"weight": weight, "bias": bias}, 2 * nd + 2, _WEIGHT_LAYOUT)
        coords = U.check_banks(banks, tuple(weight.shape[:nd]), name)
        C.check_bias(name, bias, weight.shape[nd], weight.shape[:nd], "per filter bank")
        if bias is not None and bias.dim() > 1:
            # per position, gathered before autocast's cast: its gradient sums in the parameter's dtype
            bias = bias[(slice(None), *U.bank_coordinates(coords, bias.device))]
    input, weight, bias = C.autocast(input, weight, bias)
    C.check_tensors(name, nd, input, {"weight": weight, "bias": bias}, 2 * nd + 2, _WEIGHT_LAYOUT)
    leading = tuple(weight.shape[:nd])
    grid = leading if coords is None else tuple(len(c) for c in coords)
    out_channels, in_per_group = weight.shape[nd], weight.shape[nd + 1]
    call = C.prepare(name, nd, input, grid, out_channels, in_per_group, tuple(weight.shape[nd + 2:]), stride,
                     padding, dilation, groups, padding_mode, None if coords is None else leading, coords)
    C.check_bias(name, bias, out_channels, grid)
    y = ops.locally_connected(call.x, weight, call.geometry, choose_backend(call.x, weight, call.geometry, backend))
    return _finish(y, bias, call.unbatched)


def locally_connected(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                      dilation=1, groups: int = 1, *, padding_mode: str = "zeros", backend: str = "auto",
                      banks=None) -> Tensor:
    """:func:`locally_connected1d`, ``2d`` or ``3d`` by the weight's dimensions
    (``2 * nd + 2``: ``(*output_size, C_out, C_in // groups, *kernel_size)``)."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"locally_connected: weight must be a Tensor, got {type(weight).__name__}")
    if weight.dim() not in (4, 6, 8):
        raise ValueError(f"locally_connected: weight must have 4, 6 or 8 dimensions (1d, 2d or 3d: "
                         f"{_WEIGHT_LAYOUT}), got weight of shape {tuple(weight.shape)}")
    nd = (weight.dim() - 2) // 2
    return _locally_connected(nd, input, weight, bias, stride, padding, dilation, groups, padding_mode, backend,
                              banks, f"locally_connected{nd}d")


def low_rank_locally_connected(input: Tensor, basis: Tensor, combining_weights: Tensor, bias: Tensor | None = None,
                               stride=1, padding=0, dilation=1, groups: int = 1, *, padding_mode: str = "zeros",
                               backend: str = "auto") -> Tensor:
    """Low-rank locally connected layer: position ``p`` uses the filters
    ``sum_k combining_weights[k, p] * basis[k]`` (Elsayed et al., ICML 2020).

    Args:
        input: ``(N, C_in, *input_size)`` or unbatched ``(C_in, *input_size)``.
        basis: ``(rank, C_out, C_in // groups, *kernel_size)``: the basis filter banks.
        combining_weights: ``(rank, *output_size)``; the output grid is read from it.
        bias: ``(C_out,)``, ``(C_out, *output_size)`` or ``None``.
        stride, padding, dilation, groups, padding_mode: as :func:`locally_connected2d`.
        backend: ``"conv"`` (one convolution with ``rank * C_out`` filters, then the per-position
            combination: what ``"auto"`` picks), or any other backend, which computes with the
            per-position filters (built, ``prod(output_size)`` times the basis's size).

    Returns:
        ``(N, C_out, *output_size)`` (or unbatched ``(C_out, *output_size)``).
    """
    name = "low_rank_locally_connected"
    input, basis, combining_weights, bias = C.autocast(input, basis, combining_weights, bias)
    C.check_tensors(name, max(1, basis.dim() - 3) if isinstance(basis, Tensor) else 1, input,
                    {"basis": basis, "combining_weights": combining_weights, "bias": bias},
                    basis.dim() if isinstance(basis, Tensor) and basis.dim() in (4, 5, 6) else 5,
                    "rank, out_channels, in_channels // groups, *kernel_size: 1 to 3 kernel dimensions")
    nd = basis.dim() - 3
    grid = tuple(combining_weights.shape[1:])
    if combining_weights.dim() != nd + 1 or combining_weights.shape[0] != basis.shape[0]:
        raise ValueError(f"{name}: combining_weights must have shape (rank={basis.shape[0]}, *output_size) with "
                         f"{nd} output dimensions, got shape {tuple(combining_weights.shape)}")
    call = C.prepare(name, nd, input, grid, basis.shape[1], basis.shape[2], tuple(basis.shape[3:]), stride, padding,
                     dilation, groups, padding_mode)
    C.check_bias(name, bias, basis.shape[1], grid)
    x, g = call.x, call.geometry
    chosen = "conv" if check_backend_name(backend) == "auto" else backend
    if chosen == "conv":
        y = BACKENDS["conv"].low_rank_forward(x, basis, combining_weights, g)
    else:
        weight = torch.einsum("kp,kw->pw", combining_weights.flatten(1), basis.flatten(1))
        weight = weight.view(*grid, *basis.shape[1:])
        y = ops.locally_connected(x, weight, g, choose_backend(x, weight, g, chosen))
    return _finish(y, bias, call.unbatched)


_DOC = """Locally connected {nd}d layer: a convolution with a separate filter bank per output position.

    ``out[n, o, p] = bias[o, p] + sum_{{c, k}} weight[p, o, c, k] * input_padded[n, g*C/G + c, p*stride + k*dilation]``
    where ``p`` runs over the output grid, ``k`` over the kernel and ``g = o // (out_channels / groups)``.

    Args:
        input: ``(N, C_in, {dims})`` or unbatched ``(C_in, {dims})``, floating point.
        weight: ``({odims}, C_out, C_in // groups, {kdims})``; ``weight[p]`` is the
            ``nn.Conv{nd}d`` weight used at output position ``p``. The output grid is read from it.
        bias: ``(C_out, {odims})`` (per position), ``(C_out,)`` (shared) or ``None``. Default: ``None``.
        stride, padding, dilation, groups: as ``torch.nn.functional.conv{nd}d``; ``padding`` is an
            int, a tuple, ``"valid"`` or ``"same"`` (stride 1 only). Defaults: 1, 0, 1, 1.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``. Default: ``"zeros"``.
        backend: ``"auto"`` or a name from :data:`unshared.backends.BACKENDS`: ``"torch"`` (pure
            PyTorch, any device), ``"triton"`` (fused GPU kernels), ``"composite"`` (standard
            operators, for exporters), ``"conv"`` (shared banks by convolutions). ``"auto"``: see
            :func:`unshared.backends.choose_backend`. Default: ``"auto"``.
        banks: shared filter banks (partial weight sharing): one sequence per spatial dimension,
            ``banks[d][i]`` the bank coordinate (along ``d``) of output coordinate ``i``. The
            weight's leading dimensions are then the bank grid, the output grid is
            ``(len(banks[0]), ...)``, and a non-shared bias is per bank ``(C_out, *bank_grid)``.
            Default: ``None`` (one bank per position).

    Returns:
        ``(N, C_out, {odims})`` (or unbatched ``(C_out, {odims})``), where
        ``out_i = floor((in_i + 2 * padding_i - dilation_i * (kernel_i - 1) - 1) / stride_i) + 1``.
        float16/bfloat16 inputs are multiplied and summed in float32.

    Raises:
        ValueError: when the input does not produce the weight's output grid, or on inconsistent
            shapes, channels, groups, banks or padding (the message names the values).
        TypeError: for non-tensor or non-floating-point arguments, or mismatched dtypes.

    Example::

        >>> import torch
        >>> from unshared import functional as UF
        >>> x = torch.randn(2, 3, {example_in})
        >>> w = torch.randn({example_w})
        >>> UF.locally_connected{nd}d(x, w).shape
        torch.Size([2, 4, {example_out}])
    """


def _make(nd: int, example_in: str, example_w: str, example_out: str):
    def fn(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1, *, padding_mode: str = "zeros", backend: str = "auto", banks=None) -> Tensor:
        return _locally_connected(nd, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                                  backend, banks, f"locally_connected{nd}d")

    letters = ["D", "H", "W"][3 - nd:]
    fn.__name__ = fn.__qualname__ = f"locally_connected{nd}d"
    fn.__doc__ = _DOC.format(
        nd=nd, dims=", ".join(f"{l}_in" for l in letters), odims=", ".join(f"{l}_out" for l in letters),
        kdims=", ".join(f"k{l}" for l in letters), example_in=example_in, example_w=example_w,
        example_out=example_out)
    return fn


locally_connected1d = _make(1, "10", "8, 4, 3, 3", "8")
locally_connected2d = _make(2, "6, 6", "4, 4, 4, 3, 3, 3", "4, 4")
locally_connected3d = _make(3, "4, 4, 4", "2, 2, 2, 4, 3, 3, 3, 3", "2, 2, 2")
