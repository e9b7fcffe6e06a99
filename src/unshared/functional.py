"""Functional locally connected layers: ``locally_connected1d/2d/3d`` (and :func:`locally_connected`,
any dimension), with optional shared filter banks, and :func:`low_rank_locally_connected`.

Each validates its arguments (errors name the offending values), applies non-zero padding modes,
then dispatches to a backend (:func:`unshared.backends.choose_backend`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _calls as C
from . import _plans as P
from . import _utils as U
from .backends import BACKENDS, check_backend_name, choose_backend, compute, derivatives, ops

__all__ = ["locally_connected", "locally_connected1d", "locally_connected2d", "locally_connected3d",
           "locally_connected_transpose", "locally_connected_transpose1d", "locally_connected_transpose2d",
           "locally_connected_transpose3d", "low_rank_locally_connected", "sparsely_connected"]

_WEIGHT_LAYOUT = "*output_size, out_channels, in_channels // groups, *kernel_size"


def _spatial_dims(weight, name: str, layout: str) -> int:
    """1, 2 or 3: the spatial dimensions of a weight of 4, 6 or 8 dimensions (else ``TypeError`` /
    ``ValueError`` naming the function ``name`` and the weight's ``layout``)."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name}: weight must be a Tensor, got {type(weight).__name__}")
    if weight.dim() not in (4, 6, 8):
        raise ValueError(f"{name}: weight must have 4, 6 or 8 dimensions (1d, 2d or 3d: {layout}), "
                         f"got weight of shape {tuple(weight.shape)}")
    return (weight.dim() - 2) // 2


def _finish(y: Tensor, bias: Tensor | None, unbatched: bool) -> Tensor:
    """Add the bias (shared, or per position)."""
    if bias is not None:
        y = y + compute.bias_view(bias, y.dim())
    return y.squeeze(0) if unbatched else y


def _planned(plan, direct: bool, operation, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A call of a configuration seen before (its checks passed): directly where nothing records
    or observes more than autograd (``direct``), else ``operation`` on its plan (which adds the bias)."""
    x = input.unsqueeze(0) if plan.unbatched else input
    if direct and not plan.standard and operation is ops.locally_connected:
        y = derivatives.planned_forward(x, weight, bias, plan)
    else:
        y = operation(x, weight, plan.geometry, plan.backend, plan, bias)
    return y.squeeze(0) if plan.unbatched else y


def _locally_connected(nd: int, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                       backend, banks, name: str) -> Tensor:
    key = None
    if banks is None and padding_mode == "zeros":  # a configuration seen before: its checks passed
        key, plan, direct = P.lookup(name, input, weight, bias, (stride, padding, dilation, groups, backend))
        if plan is not None and direct and not plan.standard:  # the common case, inline
            x = input.unsqueeze(0) if plan.unbatched else input
            y = derivatives.planned_forward(x, weight, bias, plan)
            return y.squeeze(0) if plan.unbatched else y
        if plan is not None:
            return _planned(plan, direct, ops.locally_connected, input, weight, bias)
    return _checked(nd, input, weight, bias, stride, padding, dilation, groups, padding_mode, backend, banks, name,
                    key)


@U.traceable
def _checked(nd: int, input, weight, bias, stride, padding, dilation, groups, padding_mode, backend, banks,
             name: str, key) -> Tensor:
    """The first call of a configuration (or one without a key): every check, then the plan."""
    coords = None
    if banks is None:
        input, weight, bias = C.autocast(input, weight, bias)
    else:
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
    chosen = choose_backend(call.x, weight, call.geometry, backend)
    plan = P.store(key, call.geometry, chosen, call.unbatched)
    y = ops.locally_connected(call.x, weight, call.geometry, chosen, plan, bias=bias)
    return y.squeeze(0) if call.unbatched else y


def locally_connected(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                      dilation=1, groups: int = 1, *, padding_mode: str = "zeros", backend: str = "auto",
                      banks=None) -> Tensor:
    """:func:`locally_connected1d`, ``2d`` or ``3d`` by the weight's dimensions
    (``2 * nd + 2``: ``(*output_size, C_out, C_in // groups, *kernel_size)``).

    Example::

        >>> import torch
        >>> from unshared import functional as UF
        >>> x, w = torch.randn(2, 3, 8), torch.randn(6, 4, 3, 3)        # 1d: 6 positions
        >>> torch.equal(UF.locally_connected(x, w), UF.locally_connected1d(x, w))
        True
        >>> UF.locally_connected(torch.randn(2, 3, 8, 8), torch.randn(6, 6, 4, 3, 3, 3)).shape   # 2d
        torch.Size([2, 4, 6, 6])
    """
    if not isinstance(weight, Tensor) or weight.dim() not in (4, 6, 8):  # (no call on the layers' cached path)
        _spatial_dims(weight, "locally_connected", _WEIGHT_LAYOUT)  # raises, naming what is wrong
    nd = (weight.dim() - 2) // 2
    return _locally_connected(nd, input, weight, bias, stride, padding, dilation, groups, padding_mode, backend,
                              banks, f"locally_connected{nd}d")


@U.traceable
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

    Example (position ``p`` of the output uses ``combining_weights[:, p]`` of the two bases)::

        >>> import torch
        >>> from unshared import functional as UF
        >>> x = torch.randn(2, 3, 8, dtype=torch.float64)
        >>> basis = torch.randn(2, 4, 3, 3, dtype=torch.float64)               # rank 2
        >>> mix = torch.rand(2, 6, dtype=torch.float64)                      # 6 output positions
        >>> y = UF.low_rank_locally_connected(x, basis, mix)
        >>> y.shape
        torch.Size([2, 4, 6])
        >>> weight = torch.einsum("kp,koci->poci", mix, basis)               # the per-position filters
        >>> torch.allclose(y, UF.locally_connected1d(x, weight))
        True
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


@U.traceable
def _transpose(nd: int, input, weight, bias, stride, padding, output_padding, groups, dilation, backend,
               name: str) -> Tensor:
    key, plan, direct = P.lookup(name, input, weight, bias,
                                 (stride, padding, output_padding, groups, dilation, backend))
    if plan is not None:
        return _planned(plan, direct, ops.locally_connected_transpose, input, weight, bias)
    input, weight, bias = C.autocast(input, weight, bias)
    C.check_tensors(name, nd, input, {"weight": weight, "bias": bias}, 2 * nd + 2,
                    "*input_size, in_channels, out_channels // groups, *kernel_size")
    grid, in_channels = tuple(weight.shape[:nd]), weight.shape[nd]
    kernel_size = tuple(weight.shape[nd + 2:])
    stride = U.positive(U.ntuple(stride, nd, "stride"), "stride")
    dilation = U.positive(U.ntuple(dilation, nd, "dilation"), "dilation")
    padding = U.transpose_padding(padding, nd, name)  # ((low, high), ...)
    output_padding = U.ntuple(output_padding, nd, "output_padding")
    if any(p < 0 for p in output_padding):
        raise ValueError(f"{name}: output_padding must be non-negative, got {output_padding=}")
    if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(f"{name}: output_padding must be smaller than stride or dilation, got "
                         f"{output_padding=}, {stride=}, {dilation=}")
    out_size = U.transposed_output_size(grid, kernel_size, stride, padding, output_padding, dilation)
    if any(o <= 0 for o in out_size):
        raise ValueError(f"{name}: the output size {out_size} is not positive ({padding=} too large)")
    unbatched = input.dim() == nd + 1
    x = input.unsqueeze(0) if unbatched else input
    if tuple(x.shape[2:]) != grid:
        raise ValueError(f"{name}: weight was made for input size {grid}, got input of spatial size "
                         f"{tuple(x.shape[2:])}")
    if x.shape[1] != in_channels:
        raise ValueError(f"{name}: expected input with {in_channels} channels (the weight's), got {x.shape[1]} "
                         f"channels in input of shape {tuple(input.shape)}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups <= 0:
        raise ValueError(f"{name}: groups must be a positive int, got groups={groups!r}")
    out_channels = weight.shape[nd + 1] * groups
    U.check_groups(in_channels, out_channels, groups)
    C.check_bias(name, bias, out_channels, out_size)
    # the adjoint of the locally connected layer from the output back to this input grid
    g = U.Geometry(out_size, grid, kernel_size, stride, padding, dilation, groups,
                   out_channels, in_channels).untraced()
    chosen = choose_backend(x, weight, g, backend)
    plan = P.store(key, g, chosen, unbatched)
    return _finish(ops.locally_connected_transpose(x, weight, g, chosen, plan), bias, unbatched)


def locally_connected_transpose(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                                output_padding=0, groups: int = 1, dilation=1, *, backend: str = "auto") -> Tensor:
    """:func:`locally_connected_transpose1d`, ``2d`` or ``3d`` by the weight's dimensions
    (``2 * nd + 2``: ``(*input_size, C_in, C_out // groups, *kernel_size)``).

    Example::

        >>> import torch
        >>> from unshared import functional as UF
        >>> x, w = torch.randn(2, 4, 5), torch.randn(5, 4, 3, 3)        # 1d: 5 input positions
        >>> y = UF.locally_connected_transpose(x, w, stride=2)
        >>> torch.equal(y, UF.locally_connected_transpose1d(x, w, stride=2))
        True
        >>> UF.locally_connected_transpose(torch.randn(2, 4, 5, 5), torch.randn(5, 5, 4, 3, 3, 3)).shape   # 2d
        torch.Size([2, 3, 7, 7])
    """
    nd = _spatial_dims(weight, "locally_connected_transpose",
                       "*input_size, in_channels, out_channels // groups, *kernel_size")
    return _transpose(nd, input, weight, bias, stride, padding, output_padding, groups, dilation, backend,
                      f"locally_connected_transpose{nd}d")


_TRANSPOSE_DOC = """Locally connected transposed {nd}d layer: ``conv_transpose{nd}d`` with a separate filter
    bank at every input position; exactly the adjoint (input gradient) of :func:`locally_connected{nd}d`
    with the same weight.

    ``out[n, o', q] = bias[o', q] + sum over (p, k) with p*stride + k*dilation - padding = q of
    sum_c input[n, c, p] * weight[p, c, o' mod (C_out/groups), k]`` (``c`` in ``o'``'s group).

    Args:
        input: ``(N, C_in, {dims})`` or unbatched ``(C_in, {dims})``; its grid is the weight's.
        weight: ``({dims}, C_in, C_out // groups, {kdims})``: ``weight[p]`` is the
            ``nn.ConvTranspose{nd}d`` weight applied at input position ``p``.
        bias: ``(C_out, {odims})`` (per output position), ``(C_out,)`` (shared) or ``None``.
        stride, padding, output_padding, groups, dilation: as ``torch.nn.functional.conv_transpose{nd}d``
            (in its order). ``output_padding`` must be smaller than stride or dilation.
        backend: as :func:`locally_connected{nd}d` (the transposed layer runs on the input-gradient
            operation of every backend).

    Returns:
        ``(N, C_out, {odims})``, ``out_i = (in_i - 1) * stride_i - 2 * padding_i +
        dilation_i * (kernel_i - 1) + output_padding_i + 1``.

    Example::

        >>> import torch
        >>> from unshared import functional as UF
        >>> x = torch.randn(2, 4, {example_in})
        >>> w = torch.randn({example_in}, 4, 3, {example_k})
        >>> UF.locally_connected_transpose{nd}d(x, w, stride=2).shape
        torch.Size([2, 3, {example_out}])
    """


def _name_and_document(fn, name: str, template: str, nd: int, **examples: str):
    """``fn`` named ``name`` (``__name__`` and ``__qualname__``), its docstring ``template`` filled in
    with ``nd``, the dimension names of ``U.dimension_names(nd)`` and the ``examples``' shapes."""
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = template.format(nd=nd, **U.dimension_names(nd), **examples)
    return fn


def _make_transpose(nd: int, example_in: str, example_k: str, example_out: str):
    name = f"locally_connected_transpose{nd}d"

    def fn(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, output_padding=0,
           groups: int = 1, dilation=1, *, backend: str = "auto") -> Tensor:
        return _transpose(nd, input, weight, bias, stride, padding, output_padding, groups, dilation, backend, name)

    return _name_and_document(fn, name, _TRANSPOSE_DOC, nd, example_in=example_in, example_k=example_k,
                              example_out=example_out)


locally_connected_transpose1d = _make_transpose(1, "5", "3", "11")
locally_connected_transpose2d = _make_transpose(2, "4, 5", "3, 3", "9, 11")
locally_connected_transpose3d = _make_transpose(3, "2, 3, 2", "2, 2, 2", "4, 6, 4")


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
    name = f"locally_connected{nd}d"

    def fn(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1, *, padding_mode: str = "zeros", backend: str = "auto", banks=None) -> Tensor:
        return _locally_connected(nd, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                                  backend, banks, name)

    return _name_and_document(fn, name, _DOC, nd, example_in=example_in, example_w=example_w,
                              example_out=example_out)


locally_connected1d = _make(1, "10", "8, 4, 3, 3", "8")
locally_connected2d = _make(2, "6, 6", "4, 4, 4, 3, 3, 3", "4, 4")
locally_connected3d = _make(3, "4, 4, 4", "2, 2, 2, 4, 3, 3, 3, 3", "2, 2, 2")

# the sparse layer's functional form (imported last: unshared.sparse imports the modules, which import this one)
from .sparse.layer import sparsely_connected  # noqa: E402
