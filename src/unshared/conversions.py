"""Exact conversions between convolution, locally connected and fully connected layers.

- :func:`from_conv`: ``nn.ConvNd`` -> the ``LocallyConnectedNd`` computing the same function
  (every position starts with the conv's filters): untie a pretrained conv net, then fine-tune.
- :func:`to_conv`: back to ``nn.ConvNd``; exact when all positions hold the same filters,
  otherwise only with an explicit ``reduce`` and a reported deviation.
- :func:`to_linear` / :func:`from_linear`: the equivalent ``nn.Linear`` on flattened input, and back.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from . import _utils as U
from .modules import LOCALLY_CONNECTED, LocallyConnectedNd
from .sparse import SparselyConnected, sparse_to_linear
from .sparse.convert import MAX_DENSE_ELEMENTS  # the largest dense matrix (elements) built unless told otherwise
from .transposed import LOCALLY_CONNECTED_TRANSPOSE

__all__ = ["from_conv", "from_conv_transpose", "to_conv", "to_linear", "from_linear", "ConvConversion"]



def _check_local(layer, name: str) -> int:
    if not isinstance(layer, LocallyConnectedNd):
        raise TypeError(f"{name} expects a LocallyConnected1d/2d/3d layer, got {type(layer).__name__}")
    if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        raise ValueError(f"{name}: the lazy layer is not initialised yet; run one forward first")
    return len(layer.kernel_size)


def from_conv(conv: nn.Module, input_size, *, shared_bias: bool = False) -> LocallyConnectedNd:
    """The locally connected layer that computes exactly what ``conv`` computes on ``input_size``.

    Every position's filters (and bias, per position unless ``shared_bias``) start as copies of
    the conv's; device, dtype and all conv arguments carry over.

    Example::

        >>> import torch, unshared
        >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1, dtype=torch.float64)
        >>> local = unshared.from_conv(conv, input_size=(10, 12))
        >>> tuple(local.weight.shape)
        (10, 12, 8, 3, 3, 3)
        >>> x = torch.randn(2, 3, 10, 12, dtype=torch.float64)
        >>> torch.allclose(local(x), conv(x))
        True
    """
    nd = _exact_conv_ndim(conv, U.CONV_MODULES, "from_conv")
    w = conv.weight
    layer = LOCALLY_CONNECTED[nd](conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                                  device=w.device, dtype=w.dtype, input_size=input_size, shared_bias=shared_bias)
    return _copy_shared(layer, conv)


def from_conv_transpose(conv: nn.Module, input_size, *, shared_bias: bool = False):
    """The ``LocallyConnectedTranspose{1,2,3}d`` that computes exactly what the ``nn.ConvTranspose``
    ``conv`` computes on inputs of ``input_size`` (the output size it would give is fixed then):
    every input position's filters (and the bias) start as copies of the conv's.

    Example::

        >>> import torch, unshared
        >>> up = torch.nn.ConvTranspose1d(4, 2, 3, stride=2, dtype=torch.float64)
        >>> local_up = unshared.from_conv_transpose(up, input_size=5)
        >>> tuple(local_up.weight.shape), local_up.output_size
        ((5, 4, 2, 3), (11,))
        >>> z = torch.randn(3, 4, 5, dtype=torch.float64)
        >>> torch.allclose(local_up(z), up(z))
        True
    """
    nd = _exact_conv_ndim(conv, U.CONV_TRANSPOSE_MODULES, "from_conv_transpose")
    w = conv.weight
    layer = LOCALLY_CONNECTED_TRANSPOSE[nd](
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.output_padding,
        conv.groups, conv.bias is not None, conv.dilation, conv.padding_mode, device=w.device, dtype=w.dtype,
        input_size=input_size, shared_bias=shared_bias)
    return _copy_shared(layer, conv)


def _exact_conv_ndim(conv: nn.Module, classes: dict[int, type], caller: str) -> int:
    """The number of spatial dimensions ``nd`` of ``conv``, whose type must be exactly ``classes[nd]``
    (``{1: nn.Conv1d, ...}`` or ``{1: nn.ConvTranspose1d, ...}``; not a subclass); else ``TypeError``."""
    nd = next((n for n, cls in classes.items() if type(conv) is cls), None)
    if nd is None:
        kind = classes[1].__name__[:-2]   # "Conv" or "ConvTranspose"
        raise TypeError(f"{caller} expects nn.{kind}1d/2d/3d, got {type(conv).__name__}")
    return nd


def _copy_shared(layer, conv):
    """Copy the conv's one filter bank (and bias) to every position of ``layer``."""
    with torch.no_grad():
        layer.weight.copy_(conv.weight.expand_as(layer.weight))
        if conv.bias is not None:
            layer.bias.copy_(conv.bias.view(-1, *(1,) * (layer.bias.dim() - 1)).expand_as(layer.bias))
    return layer


class ConvConversion(NamedTuple):
    """Result of :func:`to_conv`: the convolution and how far it is from the layer.

    ``max_deviation``: largest ``|layer.weight[p] - conv.weight|`` (and bias) over all positions;
    ``relative_deviation``: its ratio to the largest weight magnitude. Both are 0 when exact.

    Example::

        >>> import torch, unshared
        >>> conv, max_deviation, relative_deviation = unshared.to_conv(
        ...     unshared.from_conv(torch.nn.Conv2d(1, 2, 3), input_size=5))
        >>> conv, max_deviation, relative_deviation
        (Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1)), 0.0, 0.0)
    """

    conv: nn.Module
    max_deviation: float
    relative_deviation: float


def to_conv(layer: LocallyConnectedNd, reduce: str | None = None) -> ConvConversion:
    """A ``nn.ConvNd`` with the layer's arguments and one filter bank for all positions.

    Exact (``max_deviation == 0``) when every position holds the same filters and bias; otherwise
    raises ``ValueError`` unless ``reduce`` is ``"mean"`` or ``"median"``, which picks the filter
    bank as that statistic over positions and reports the deviation.

    Example::

        >>> import torch, unshared
        >>> local = unshared.from_conv(torch.nn.Conv1d(2, 3, 3), input_size=8)   # 6 positions
        >>> unshared.to_conv(local).max_deviation
        0.0
        >>> with torch.no_grad():
        ...     _ = local.weight[0].add_(0.6)                  # position 0 alone moves
        >>> unshared.to_conv(local)
        Traceback (most recent call last):
        ...
        ValueError: to_conv: positions hold different filters (largest difference 0.6); pass reduce='mean' ...
        >>> round(unshared.to_conv(local, reduce="mean").max_deviation, 4)  # 0.6 - 0.6 / 6
        0.5
    """
    nd = _check_local(layer, "to_conv")
    padding = _conv_padding(layer)  # before the weights: one-sided padding is refused whatever they hold
    if reduce not in (None, "mean", "median"):
        raise ValueError(f"to_conv: reduce must be None, 'mean' or 'median', got reduce={reduce!r}")
    w = layer.weight.detach().reshape(-1, *layer.weight.shape[nd:])
    b = None if layer.bias is None else layer.bias.detach()
    b = None if b is None else (b.reshape(b.shape[0], -1).T if b.dim() > 1 else b.unsqueeze(0))
    pick = {None: lambda t: t[0], "mean": lambda t: t.mean(0),
            "median": lambda t: t.median(0).values}[reduce]
    weight, bias = pick(w), None if b is None else pick(b)
    deviation = (w - weight).abs().max().item()
    if b is not None:
        deviation = max(deviation, (b - bias).abs().max().item())
    if deviation > 0 and reduce is None:
        raise ValueError(
            f"to_conv: positions hold different filters (largest difference {deviation:.3g}); "
            f"pass reduce='mean' or reduce='median' for an approximate convolution"
        )
    scale = max(w.abs().max().item(), 0.0 if b is None else b.abs().max().item())
    conv = U.CONV_MODULES[nd](layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, padding,
                     layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode,
                     device=w.device, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return ConvConversion(conv, deviation, deviation / scale if scale else 0.0)


def _conv_padding(layer: LocallyConnectedNd):
    """The layer's padding as ``nn.Conv`` takes it: ``"valid"``, ``"same"`` or one int per dimension;
    ``ValueError`` for one-sided padding (``(low, high)`` pairs that differ, ``"causal"``)."""
    if layer.padding in ("valid", "same"):
        return layer.padding
    pairs = U.normalize_padding(layer.padding, layer.kernel_size, layer.stride, layer.dilation)
    if any(lo != hi for lo, hi in pairs):
        name = U.CONV_MODULES[len(pairs)].__name__
        raise ValueError(f"to_conv: nn.{name} cannot express the one-sided padding={layer.padding!r} of this "
                         f"{type(layer).__name__} ((low, high) = {pairs}); pad the input first (F.pad, or "
                         f"nn.ZeroPad{len(pairs)}d for zeros) and convert a layer with padding=0")
    return tuple(lo for lo, _ in pairs)


def _dense_index(layer: LocallyConnectedNd) -> tuple[Tensor, Tensor]:
    """Where each entry of ``layer.weight`` lands in the dense matrix of :func:`to_linear`.

    Returns ``(rows, cols)``: int64 tensors of the weight's shape. ``rows`` index the flattened
    output ``(C_out, *output_size)``, ``cols`` the flattened input ``(C_in, *input_size)``, -1 for
    a tap that reads zero padding (other padding modes map it into the input, where several taps
    may meet).
    """
    nd, mode = len(layer.kernel_size), layer.padding_mode
    pads = U.normalize_padding(layer.padding, layer.kernel_size, layer.stride, layer.dilation)
    position = torch.zeros((), dtype=torch.long)   # flat output position, shaped (*output_size, *1)
    source = torch.zeros((), dtype=torch.long)     # flat input position of each tap, (*output_size, *kernel)
    valid = torch.ones((), dtype=torch.bool)
    for d, (n, o, k, s, dil, (lo, _)) in enumerate(zip(layer.input_size, layer.output_size, layer.kernel_size,
                                                       layer.stride, layer.dilation, pads)):
        i = torch.arange(o).view(-1, 1) * s + torch.arange(k) * dil - lo   # (o, k) input coordinates
        if mode == "reflect":
            i = torch.where(i < 0, -i, torch.where(i >= n, 2 * (n - 1) - i, i))
            if ((i < 0) | (i >= n)).any():
                raise ValueError(f"to_linear: padding_mode='reflect' needs padding < input size, got "
                                 f"padding={pads} for input_size={layer.input_size}")
        elif mode == "replicate":
            i = i.clamp(0, n - 1)
        elif mode == "circular":
            i = i.remainder(n)
        shape = [1] * 2 * nd
        shape[d], shape[nd + d] = o, k
        source = source * n + i.view(shape)
        valid = valid & ((i >= 0) & (i < n)).view(shape)
        position = position * o + torch.arange(o).view(shape[:nd] + [1] * nd)
    out_channels, per_group = layer.out_channels, layer.in_channels // layer.groups
    o = torch.arange(out_channels).view(-1, 1)
    channel = o // (out_channels // layer.groups) * per_group + torch.arange(per_group)   # (C_out, C_in/g)
    lift = (1,) * nd
    rows = o.view(*lift, -1, 1, *lift) * math.prod(layer.output_size) + position.unsqueeze(nd).unsqueeze(nd)
    cols = channel.view(*lift, *channel.shape, *lift) * math.prod(layer.input_size) + source.unsqueeze(nd).unsqueeze(nd)
    cols = torch.where(valid.unsqueeze(nd).unsqueeze(nd), cols, -1)
    shape = layer.weight.shape
    return rows.expand(shape).to(layer.weight.device), cols.expand(shape).to(layer.weight.device)


def to_linear(layer: LocallyConnectedNd | SparselyConnected, max_elements: int = MAX_DENSE_ELEMENTS) -> nn.Linear:
    """The ``nn.Linear`` equal to ``layer`` on flattened input: ``linear(x.flatten(1))`` equals
    ``layer(x).flatten(1)``. Its weight is zero outside each position's receptive field (a
    :class:`~unshared.SparselyConnected` layer's: outside its connections, see
    :func:`unshared.sparse.sparse_to_linear`).

    The dense weight has ``out_channels * prod(output_size) * in_channels * prod(input_size)``
    elements; above ``max_elements`` this raises ``ValueError`` with the size.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LocallyConnected1d(2, 3, 3, input_size=6, dtype=torch.float64)
        >>> dense = unshared.to_linear(layer)
        >>> dense
        Linear(in_features=12, out_features=12, bias=True)
        >>> x = torch.randn(4, 2, 6, dtype=torch.float64)
        >>> torch.allclose(dense(x.flatten(1)), layer(x).flatten(1))
        True
        >>> int(dense.weight.count_nonzero()), layer.weight.numel()  # zero outside the receptive fields
        (72, 72)
    """
    if isinstance(layer, SparselyConnected):
        return sparse_to_linear(layer, max_elements)
    nd = _check_local(layer, "to_linear")
    n_in = layer.in_channels * math.prod(layer.input_size)
    n_out = layer.out_channels * math.prod(layer.output_size)
    if n_in * n_out > max_elements:
        raise ValueError(
            f"to_linear: the dense weight would be {n_out} x {n_in} = {n_in * n_out:,} elements "
            f"({n_in * n_out * layer.weight.element_size() / 2**30:.2f} GiB), more than "
            f"max_elements={max_elements:,}"
        )
    w = layer.weight.detach()
    rows, cols = _dense_index(layer)
    tap = cols >= 0
    linear = nn.Linear(n_in, n_out, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        # a non-zero padding mode can send several taps of one position to the same input
        linear.weight.zero_().index_put_((rows[tap], cols[tap]), w[tap], accumulate=True)
        if layer.bias is not None:
            b = layer.bias.detach()
            linear.bias.copy_((b.view(-1, *(1,) * nd).expand(-1, *layer.output_size) if b.dim() == 1 else b).flatten())
    return linear


def from_linear(linear: nn.Linear, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                dilation=1, groups: int = 1, *, input_size, atol: float = 0.0) -> LocallyConnectedNd:
    """Recover the locally connected layer from a dense ``nn.Linear`` with local structure.

    The arguments describe the layer (zero padding), ints spread over all dimensions as in the
    layer classes. The number of dimensions is the length of any tuple among them; when all are
    ints, the one ``nd`` in 1..3 with ``linear.in_features == in_channels * input_size ** nd``.
    Raises ``ValueError`` when no single ``nd`` fits, when ``linear`` has the wrong size, or when
    it has weights larger than ``atol`` outside the receptive fields (the message gives the largest).

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LocallyConnected1d(2, 3, 3, input_size=6)
        >>> back = unshared.from_linear(unshared.to_linear(layer), 2, 3, 3, input_size=6)
        >>> type(back).__name__, torch.equal(back.weight, layer.weight), torch.equal(back.bias, layer.bias)
        ('LocallyConnected1d', True, True)
        >>> unshared.from_linear(torch.nn.Linear(12, 12), 2, 3, 3, input_size=6)
        Traceback (most recent call last):
        ...
        ValueError: from_linear: the dense weight is not local: an entry of magnitude ... (atol=0.0)
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"from_linear expects nn.Linear, got {type(linear).__name__}")
    nd = U.spatial_ndim(input_size=input_size, kernel_size=kernel_size, stride=stride, padding=padding,
                      dilation=dilation)
    if nd is None:  # every size is an int: the dense layer's width tells the dimensionality
        fits = [n for n in (1, 2, 3) if in_channels * input_size**n == linear.in_features]
        if len(fits) != 1:
            raise ValueError(
                f"from_linear: in_features={linear.in_features} is in_channels={in_channels} times "
                f"input_size**nd for nd in {fits} (of 1, 2, 3) with input_size={input_size}; "
                f"pass input_size as a tuple")
        nd = fits[0]
    w = linear.weight.detach()
    layer = LOCALLY_CONNECTED[nd](in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                       linear.bias is not None, device=w.device, dtype=w.dtype, input_size=input_size)
    n_in = in_channels * math.prod(layer.input_size)
    n_out = out_channels * math.prod(layer.output_size)
    if tuple(w.shape) != (n_out, n_in):
        raise ValueError(f"from_linear: expected a Linear({n_in}, {n_out}) for this layer, "
                         f"got Linear({w.shape[1]}, {w.shape[0]})")
    rows, cols = _dense_index(layer)   # zero padding: each dense entry holds at most one weight
    tap = cols >= 0
    inside = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    inside[rows[tap], cols[tap]] = True
    outside = w[~inside].abs().max().item() if (~inside).any() else 0.0
    if outside > atol:
        raise ValueError(f"from_linear: the dense weight is not local: an entry of magnitude {outside:.3g} "
                         f"lies outside every receptive field (atol={atol})")
    with torch.no_grad():
        layer.weight.copy_(torch.where(tap, w[rows, cols.clamp(min=0)], 0))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().view(layer.bias.shape))
    return layer
