"""Per-sample gradients of the layers, for differentially private SGD (Opacus).

At every output position a locally connected layer is a small linear map, so one sample's weight
gradient there is an outer product: ``grad_output[n, :, p]`` (per group) times the input window
that ``p`` reads (the unfolded input). :func:`per_sample_gradients` computes them all at once
(for shared banks, summed over each bank's positions); :func:`per_sample_norms` gives their
norms without building them, as Opacus's ghost clipping wants. A transposed layer is the
adjoint, so the roles swap: its input times the unfolded output gradient.

Opacus computes the per-sample gradients of a layer it does not know with ``torch.func``
(``vmap(grad(...))``, exact but slower); :func:`register_opacus` registers these instead for the
plain, tiled, region and transposed layers (low-rank layers keep ``torch.func``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _utils as U
from .modules import LOCALLY_CONNECTED, LocallyConnectedNd
from .sharing import RegionLocallyConnected1d, RegionLocallyConnected2d, RegionLocallyConnected3d
from .sharing import TiledLocallyConnected1d, TiledLocallyConnected2d, TiledLocallyConnected3d
from .transposed import LOCALLY_CONNECTED_TRANSPOSE

__all__ = ["LAYERS", "unfold", "per_sample_gradients", "per_sample_norms", "register_opacus"]

#: The layer classes computed here (and registered with Opacus); low-rank layers are not among them.
LAYERS = (*LOCALLY_CONNECTED.values(), *LOCALLY_CONNECTED_TRANSPOSE.values(),
          TiledLocallyConnected1d, TiledLocallyConnected2d, TiledLocallyConnected3d,
          RegionLocallyConnected1d, RegionLocallyConnected2d, RegionLocallyConnected3d)


def unfold(x: Tensor, kernel_size, stride, padding, dilation, padding_mode: str = "zeros") -> Tensor:
    """The windows of a locally connected (or convolution) layer: ``(N, C, *input_size)`` ->
    ``(N, *output_size, C, *kernel_size)``; ``padding``: ``((lo, hi), ...)`` per dimension."""
    nd = len(kernel_size)
    pads = [p for pair in reversed(padding) for p in pair]
    if any(pads):
        x = F.pad(x, pads, mode="constant" if padding_mode == "zeros" else padding_mode)
    for d, (k, s, dil) in enumerate(zip(kernel_size, stride, dilation)):
        x = x.unfold(2 + d, dil * (k - 1) + 1, s)  # a window axis at the end: (..., span)
        if dil > 1:
            x = x[..., ::dil]
    return x.movedim(1, 1 + nd)  # (N, *output_size, C, *kernel_size)


def _check(layer, input, grad_output) -> None:
    if not isinstance(layer, LAYERS):
        raise TypeError(f"per-sample gradients are computed here for {', '.join(c.__name__ for c in LAYERS)}; "
                        f"got {type(layer).__name__} (Opacus computes it with torch.func)")
    nd = len(layer.kernel_size)
    if input.dim() != nd + 2 or grad_output.dim() != nd + 2 or input.shape[0] != grad_output.shape[0]:
        raise ValueError(f"expected a batched input and output gradient of {nd + 2} dimensions, got input of shape "
                         f"{tuple(input.shape)} and grad_output of shape {tuple(grad_output.shape)}")


def _factors(layer: nn.Module, input: Tensor, grad_output: Tensor):
    """Per sample, position and group, the two vectors whose outer product is the weight gradient
    there: ``(N, P, G, A)`` and ``(N, P, G, B)`` (``A x B``: a position's filters of one group)."""
    n, g = input.shape[0], layer.groups
    input = input.to(grad_output.dtype)
    if isinstance(layer, LocallyConnectedNd):  # grad_output (the outputs) times the input windows
        pads = U.normalize_padding(layer.padding, layer.kernel_size, layer.stride, layer.dilation)
        windows = unfold(input, layer.kernel_size, layer.stride, pads, layer.dilation, layer.padding_mode)
        outputs = grad_output.flatten(2).transpose(1, 2)
        return outputs.reshape(n, -1, g, layer.out_channels // g), windows.reshape(n, outputs.shape[1], g, -1)
    # transposed: the adjoint, so its input times the windows of the output gradient
    windows = unfold(grad_output, layer.kernel_size, layer.stride, U.padding_pairs(layer.padding), layer.dilation)
    inputs = input.flatten(2).transpose(1, 2)
    return inputs.reshape(n, -1, g, layer.in_channels // g), windows.reshape(n, inputs.shape[1], g, -1)


def _bias_gradient(layer: nn.Module, grad_output: Tensor, banks: Tensor | None) -> Tensor:
    """``(N, *bias.shape)``: a sample's bias gradient is its output gradient (summed as shared)."""
    if layer.shared_bias:
        return grad_output.flatten(2).sum(2)
    if banks is None:
        return grad_output
    flat = grad_output.flatten(2)
    summed = flat.new_zeros(*flat.shape[:2], math.prod(layer.bias.shape[1:]))
    return summed.index_add_(2, banks.to(flat.device), flat).view(grad_output.shape[0], *layer.bias.shape)


def per_sample_gradients(layer: nn.Module, input: Tensor, grad_output: Tensor) -> dict[nn.Parameter, Tensor]:
    """``{parameter: (N, *parameter.shape)}``: each sample's gradient of the layer's parameters
    that require one, from the layer's batched ``input`` and the gradient of its output (the
    signature of an Opacus grad sampler, with ``[input]`` there)."""
    _check(layer, input, grad_output)
    n, nd = input.shape[0], len(layer.kernel_size)
    banks = getattr(layer, "position_bank", None)
    result = {}
    if layer.weight.requires_grad:
        a, b = _factors(layer, input, grad_output)
        if banks is None:
            gradient = a.unsqueeze(-1) * b.unsqueeze(-2)  # (N, P, G, A, B)
        else:  # one batched product per bank over its positions: nothing P-sized is built
            gradient = a.new_empty(n, math.prod(layer.weight.shape[:nd]), *a.shape[2:], b.shape[-1])
            for bank in range(gradient.shape[1]):
                where = (banks == bank).nonzero().flatten().to(a.device)
                gradient[:, bank] = torch.einsum("npga,npgb->ngab", a[:, where], b[:, where])
        result[layer.weight] = gradient.reshape(n, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        result[layer.bias] = _bias_gradient(layer, grad_output, banks)
    return result


def per_sample_norms(layer: nn.Module, input: Tensor, grad_output: Tensor) -> dict[nn.Parameter, Tensor]:
    """``{parameter: (N,)}``: the norm of each sample's gradient, without building the gradients
    (``|a b^T| = |a| |b|`` at each position and group), for layers without shared banks."""
    _check(layer, input, grad_output)
    if getattr(layer, "position_bank", None) is not None:
        return {p: g.flatten(1).norm(dim=1) for p, g in per_sample_gradients(layer, input, grad_output).items()}
    result = {}
    if layer.weight.requires_grad:
        a, b = _factors(layer, input, grad_output)
        result[layer.weight] = (a.square().sum(-1) * b.square().sum(-1)).flatten(1).sum(1).sqrt()
    if layer.bias is not None and layer.bias.requires_grad:
        result[layer.bias] = _bias_gradient(layer, grad_output, None).flatten(1).norm(dim=1)
    return result


def _opacus_sampler(compute):
    def sampler(layer, activations, backprops):
        return compute(layer, activations[0], backprops)

    sampler.__name__ = sampler.__qualname__ = compute.__name__
    return sampler


def register_opacus() -> None:
    """Register :func:`per_sample_gradients` as Opacus's grad sampler (hooks and fast gradient
    clipping) and :func:`per_sample_norms` as its norm sampler (ghost clipping) for the plain,
    tiled, region and transposed layers of every dimension. Call it before ``make_private``."""
    from opacus.grad_sample import register_grad_sampler, register_norm_sampler

    register_grad_sampler(list(LAYERS))(_opacus_sampler(per_sample_gradients))
    register_norm_sampler(list(LAYERS))(_opacus_sampler(per_sample_norms))
