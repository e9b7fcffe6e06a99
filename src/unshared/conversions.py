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
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from . import functional as UF
from .modules import LocallyConnected1d, LocallyConnected2d, LocallyConnected3d, _LocallyConnectedNd

__all__ = ["from_conv", "to_conv", "to_linear", "from_linear", "ConvConversion"]

_LOCAL = {1: LocallyConnected1d, 2: LocallyConnected2d, 3: LocallyConnected3d}
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_FUNCTIONAL = {1: UF.locally_connected1d, 2: UF.locally_connected2d, 3: UF.locally_connected3d}

#: Largest dense matrix (elements) that :func:`to_linear` builds unless told otherwise.
MAX_DENSE_ELEMENTS = 1 << 26


def _check_local(layer, name: str) -> int:
    if not isinstance(layer, _LocallyConnectedNd):
        raise TypeError(f"{name} expects a LocallyConnected1d/2d/3d layer, got {type(layer).__name__}")
    if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        raise ValueError(f"{name}: the lazy layer is not initialised yet; run one forward first")
    return layer._nd


def from_conv(conv: nn.Module, input_size, *, shared_bias: bool = False) -> _LocallyConnectedNd:
    """The locally connected layer that computes exactly what ``conv`` computes on ``input_size``.

    Every position's filters (and bias, per position unless ``shared_bias``) start as copies of
    the conv's; device, dtype and all conv arguments carry over.
    """
    nd = next((n for n, cls in _CONV.items() if type(conv) is cls), None)
    if nd is None:
        raise TypeError(f"from_conv expects nn.Conv1d/2d/3d, got {type(conv).__name__}")
    w = conv.weight
    layer = _LOCAL[nd](conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                       device=w.device, dtype=w.dtype, input_size=input_size, shared_bias=shared_bias)
    with torch.no_grad():
        layer.weight.copy_(w.expand_as(layer.weight))
        if conv.bias is not None:
            layer.bias.copy_(conv.bias.view(-1, *(1,) * (layer.bias.dim() - 1)).expand_as(layer.bias))
    return layer


class ConvConversion(NamedTuple):
    """Result of :func:`to_conv`: the convolution and how far it is from the layer.

    ``max_deviation``: largest ``|layer.weight[p] - conv.weight|`` (and bias) over all positions;
    ``relative_deviation``: its ratio to the largest weight magnitude. Both are 0 when exact.
    """

    conv: nn.Module
    max_deviation: float
    relative_deviation: float


def to_conv(layer: _LocallyConnectedNd, reduce: str | None = None) -> ConvConversion:
    """A ``nn.ConvNd`` with the layer's arguments and one filter bank for all positions.

    Exact (``max_deviation == 0``) when every position holds the same filters and bias; otherwise
    raises ``ValueError`` unless ``reduce`` is ``"mean"`` or ``"median"``, which picks the filter
    bank as that statistic over positions and reports the deviation.
    """
    nd = _check_local(layer, "to_conv")
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
    conv = _CONV[nd](layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                     layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode,
                     device=w.device, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return ConvConversion(conv, deviation, deviation / scale if scale else 0.0)


def to_linear(layer: _LocallyConnectedNd, max_elements: int = MAX_DENSE_ELEMENTS) -> nn.Linear:
    """The ``nn.Linear`` equal to ``layer`` on flattened input: ``linear(x.flatten(1))`` equals
    ``layer(x).flatten(1)``. Its weight is zero outside each position's receptive field.

    The dense weight has ``out_channels * prod(output_size) * in_channels * prod(input_size)``
    elements; above ``max_elements`` this raises ``ValueError`` with the size.
    """
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
    # the layer without bias is linear: its response to the identity basis is the dense matrix
    basis = torch.eye(n_in, dtype=w.dtype, device=w.device).view(n_in, layer.in_channels, *layer.input_size)
    columns = _FUNCTIONAL[nd](basis, w, None, layer.stride, layer.padding, layer.dilation, layer.groups,
                              padding_mode=layer.padding_mode)
    linear = nn.Linear(n_in, n_out, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        linear.weight.copy_(columns.reshape(n_in, n_out).T)
        if layer.bias is not None:
            b = layer.bias.detach()
            linear.bias.copy_((b.view(-1, *(1,) * nd).expand(-1, *layer.output_size) if b.dim() == 1 else b).flatten())
    return linear


def from_linear(linear: nn.Linear, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                dilation=1, groups: int = 1, *, input_size, atol: float = 0.0) -> _LocallyConnectedNd:
    """Recover the locally connected layer from a dense ``nn.Linear`` with local structure.

    The arguments describe the layer (zero padding; ``len(input_size)`` gives the dimension).
    Raises ``ValueError`` when ``linear`` has the wrong size or weights larger than ``atol``
    outside the receptive fields (the message gives the largest one).
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"from_linear expects nn.Linear, got {type(linear).__name__}")
    size = (input_size,) if isinstance(input_size, int) else tuple(input_size)
    nd = len(size)
    w = linear.weight.detach()
    layer = _LOCAL[nd](in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                       linear.bias is not None, device=w.device, dtype=w.dtype, input_size=size)
    n_in = in_channels * math.prod(layer.input_size)
    n_out = out_channels * math.prod(layer.output_size)
    if tuple(w.shape) != (n_out, n_in):
        raise ValueError(f"from_linear: expected a Linear({n_in}, {n_out}) for this layer, "
                         f"got Linear({w.shape[1]}, {w.shape[0]})")
    # which dense entries each local weight occupies: push one-hot weights through to_linear's map
    index = torch.arange(1, layer.weight.numel() + 1, dtype=torch.float64, device=w.device)
    probe = _FUNCTIONAL[nd](
        torch.eye(n_in, dtype=torch.float64, device=w.device).view(n_in, in_channels, *layer.input_size),
        index.view(layer.weight.shape), None, layer.stride, layer.padding, layer.dilation, layer.groups)
    where = probe.reshape(n_in, n_out).T.round().long()  # 0 outside receptive fields, else 1 + index
    inside = where > 0
    outside = w[~inside].abs().max().item() if (~inside).any() else 0.0
    if outside > atol:
        raise ValueError(f"from_linear: the dense weight is not local: an entry of magnitude {outside:.3g} "
                         f"lies outside every receptive field (atol={atol})")
    with torch.no_grad():
        flat = torch.zeros(layer.weight.numel(), dtype=w.dtype, device=w.device)
        flat[where[inside] - 1] = w[inside]
        layer.weight.copy_(flat.view(layer.weight.shape))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().view(layer.bias.shape))
    return layer
