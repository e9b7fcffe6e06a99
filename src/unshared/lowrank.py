"""Low-rank locally connected layers (Elsayed, Ramachandran, Shlens, Kornblith, "Revisiting spatial
invariance with low-rank local connectivity", ICML 2020).

The filter bank at output position ``p`` is a combination of ``rank`` basis banks,
``W[p] = sum_k alpha[k, p] * basis[k]``, with spatially varying combining weights ``alpha``:
learned per position (``combining="position"``) or factorised as a sum of one term per spatial
dimension (``combining="factorized"``: row + column in 2d), softmax-normalised over ``k`` by default.
``rank=1`` is a convolution; with zero logits every position gets the same combination, so the
layer starts as a convolution.

Computed as one convolution with ``rank * out_channels`` filters followed by the per-position
combination: per-position filters are never built.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _utils as U
from .functional import _pad
from .modules import _LocallyConnectedNd

__all__ = ["LowRankLocallyConnected1d", "LowRankLocallyConnected2d", "LowRankLocallyConnected3d"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class _LowRankNd(_LocallyConnectedNd):
    _grid_name = "basis"

    def __init__(self, *args, rank: int, combining: str = "position", normalize: bool = True, **kwargs):
        name = type(self).__name__
        if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
            raise ValueError(f"{name}: rank must be a positive int, got rank={rank!r}")
        if combining not in ("position", "factorized"):
            raise ValueError(f"{name}: combining must be 'position' or 'factorized', got combining={combining!r}")
        self.rank, self.combining, self.normalize = rank, combining, bool(normalize)
        if kwargs.get("shared_bias") is False:
            raise ValueError(f"{name}: the bias is shared (one per output channel); shared_bias=False is not supported")
        kwargs["shared_bias"] = True
        super().__init__(*args, **kwargs)

    def _grid(self):
        return (self.rank,)

    def _create_parameters(self, bias, factory_kwargs):
        cg = self.in_channels // self.groups
        self.weight = nn.Parameter(torch.empty(self.rank, self.out_channels, cg, *self.kernel_size, **factory_kwargs))
        if self.combining == "position":
            shapes = [(self.rank, *self.output_size)]
        else:
            shapes = [(self.rank, o) for o in self.output_size]
        self.combining_logits = nn.ParameterList(nn.Parameter(torch.empty(s, **factory_kwargs)) for s in shapes)
        self.bias = nn.Parameter(torch.empty(self.out_channels, **factory_kwargs)) if bias else None

    def reset_parameters(self) -> None:
        """Basis banks as ``nn.Conv`` (bound ``1/sqrt(fan_in)``) scaled by ``sqrt(rank)``, so that their
        mean (the initial filter at every position) has a convolution's variance; logits at zero
        (or combining weights ``1/rank`` without normalisation): the layer starts as a convolution."""
        fan_in = U.fan_in(self.in_channels, self.groups, self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound * math.sqrt(self.rank), bound * math.sqrt(self.rank))
        for i, logits in enumerate(self.combining_logits):
            value = 0.0 if self.normalize or i else 1.0 / self.rank
            nn.init.constant_(logits, value)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def combining_weights(self) -> Tensor:
        """``alpha``: ``(rank, *output_size)``."""
        nd = self._nd
        if self.combining == "position":
            logits = self.combining_logits[0]
        else:
            logits = sum(t.view(self.rank, *(1,) * d, -1, *(1,) * (nd - d - 1))
                         for d, t in enumerate(self.combining_logits))
            logits = logits.expand(self.rank, *self.output_size)
        return logits.softmax(0) if self.normalize else logits

    def expanded_weight(self) -> Tensor:
        """The per-position weight ``(*output_size, O, C/groups, *kernel_size)`` (for inspection)."""
        return torch.einsum("kp,kw->pw", self.combining_weights().flatten(1), self.weight.flatten(1)).view(
            *self.output_size, *self.weight.shape[1:])

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        nd = self._nd
        unbatched = input.dim() == nd + 1
        x = input.unsqueeze(0) if unbatched else input
        if any(lo or hi for lo, hi in self._padding):
            if self.padding_mode == "zeros":
                x = F.pad(x, [p for pair in reversed(self._padding) for p in pair])
            else:
                x = _pad(x, self._padding, self.padding_mode, type(self).__name__)
        g, og = self.groups, self.out_channels // self.groups
        # filters ordered (group, basis, out_per_group) so that conv groups stay contiguous
        basis = self.weight.view(self.rank, g, og, *self.weight.shape[2:]).transpose(0, 1)
        z = _CONV[nd](x, basis.reshape(g * self.rank * og, *self.weight.shape[2:]), None, self.stride, 0,
                      self.dilation, g)
        z = z.view(x.shape[0], g, self.rank, og, *self.output_size)
        alpha = self.combining_weights().view(1, 1, self.rank, 1, *self.output_size)
        y = (z * alpha).sum(2).reshape(x.shape[0], self.out_channels, *self.output_size)
        if self.bias is not None:
            y = y + self.bias.view(-1, *(1,) * nd)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        s = super().extra_repr().replace(", shared_bias=True", "")
        s += f", rank={self.rank}"
        if self.combining != "position":
            s += f", combining={self.combining}"
        if not self.normalize:
            s += ", normalize=False"
        return s


def _doc(nd):
    return f"""Low-rank locally connected {nd}d layer: ``rank`` basis filter banks combined per position.

    Arguments as ``LocallyConnected{nd}d`` plus keyword-only ``rank`` (number of basis banks),
    ``combining`` (``"position"``: logits ``(rank, *output_size)``; ``"factorized"``: one
    ``(rank, out_i)`` term per dimension, summed) and ``normalize`` (softmax over the basis, default True).
    The bias is shared per output channel.

    Attributes:
        weight: basis ``(rank, C_out, C_in // groups, *kernel_size)``.
        combining_logits: ``ParameterList`` of the combining terms.
        bias: ``(C_out,)``.
    """


def _make(nd):
    return type(f"LowRankLocallyConnected{nd}d", (_LowRankNd,), {"_nd": nd, "__doc__": _doc(nd),
                                                                "__module__": __name__})


LowRankLocallyConnected1d = _make(1)
LowRankLocallyConnected2d = _make(2)
LowRankLocallyConnected3d = _make(3)
