"""Low-rank locally connected layers (Elsayed, Ramachandran, Shlens, Kornblith, "Revisiting spatial
invariance with low-rank local connectivity", ICML 2020).

The filter bank at output position ``p`` is a combination of ``rank`` basis banks,
``W[p] = sum_k alpha[k, p] * basis[k]``, with spatially varying combining weights ``alpha``:
learned per position (``combining="position"``) or factorised as a sum of one term per spatial
dimension (``combining="factorized"``: row + column in 2d), softmax-normalised over ``k`` by default.
``rank=1`` is a convolution; with zero logits every position gets the same combination, so the
layer starts as a convolution.

Computed by :func:`unshared.functional.low_rank_locally_connected`: by default one convolution
with ``rank * out_channels`` filters followed by the per-position combination (the ``conv``
backend: per-position filters are never built); any other ``backend`` computes with the
per-position filters.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import _utils as U
from . import functional as UF
from .modules import LocallyConnectedNd

__all__ = ["LowRankLocallyConnected1d", "LowRankLocallyConnected2d", "LowRankLocallyConnected3d"]


class _LowRankNd(LocallyConnectedNd):
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
        return UF.low_rank_locally_connected(input, self.weight, self.combining_weights(), self.bias, self.stride,
                                             self.padding, self.dilation, self.groups,
                                             padding_mode=self.padding_mode, backend=self.backend)

    def extra_repr(self) -> str:
        s = super().extra_repr().replace(", shared_bias=True", "")
        s += f", rank={self.rank}"
        if self.combining != "position":
            s += f", combining={self.combining}"
        if not self.normalize:
            s += ", normalize=False"
        return s





def _doc(nd: int) -> str:
    names = U.dimension_names(nd)
    dims, odims = names["dims"], names["odims"]
    size, xsize = {1: ("12", "12"), 2: ("(12, 12)", "12, 12"), 3: ("(6, 6, 6)", "6, 6, 6")}[nd]
    return f"""Low-rank locally connected {nd}d layer (Elsayed et al., ICML 2020): ``rank`` basis filter
    banks, combined with spatially varying weights at every output position.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype, input_size, backend:
            as ``LocallyConnected{nd}d``.
        rank: number of basis filter banks (keyword-only); 1 is a convolution.
        combining: ``"position"`` (logits ``(rank, *output_size)``, default) or ``"factorized"``
            (one ``(rank, out_i)`` term per spatial dimension, summed).
        normalize: softmax over the basis (default ``True``); else the raw logits combine.

    Shape:
        - Input: ``(N, C_in, {dims})`` or ``(C_in, {dims})``.
        - Output: ``(N, C_out, {odims})`` or ``(C_out, {odims})``, sizes as ``nn.Conv{nd}d``.

    Attributes:
        weight: the basis ``(rank, C_out, C_in // groups, *kernel_size)``.
        combining_logits: ``ParameterList`` of the combining terms; ``combining_weights()`` gives
            ``(rank, {odims})``. Zero logits at first: the layer starts as a convolution.
        bias: ``(C_out,)`` (shared per output channel) or ``None``.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LowRankLocallyConnected{nd}d(3, 8, 3, padding=1, input_size={size}, rank=4)
        >>> layer(torch.randn(2, 3, {xsize})).shape
        torch.Size([2, 8, {xsize}])
    """


class LowRankLocallyConnected1d(_LowRankNd):
    __doc__ = _doc(1)
    _nd = 1


class LowRankLocallyConnected2d(_LowRankNd):
    __doc__ = _doc(2)
    _nd = 2


class LowRankLocallyConnected3d(_LowRankNd):
    __doc__ = _doc(3)
    _nd = 3
