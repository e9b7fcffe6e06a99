"""The sparsely connected layer: :func:`sparsely_connected` and :class:`SparselyConnected`."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import autograd, kernels
from . import connectivity as K

__all__ = ["SparselyConnected", "sparsely_connected"]


def _standard_operators() -> bool:
    """Whether a tracer that needs standard operators runs (ONNX export, ``torch.jit.trace``)."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def _checking() -> bool:
    return not (torch.compiler.is_compiling() or torch.compiler.is_exporting() or _standard_operators())


def sparsely_connected(input: Tensor, weight: Tensor, connectivity, bias: Tensor | None = None,
                       out_features: int | None = None, *, backend: str = "auto") -> Tensor:
    """One filter per connection: ``y[n, o, j] = sum over pairs e = (i, j) and c of
    weight[e, o, c] * input[n, c, i] + bias[o, j]``.

    Args:
        input: ``(N, C, in_features)`` or unbatched ``(C, in_features)``; with one input channel
            also ``(N, in_features)`` or ``(in_features,)``, as ``nn.Linear``.
        weight: ``(nnz, O, C)``, ``weight[e]`` the filter of connection ``e``.
        connectivity: ``(2, nnz)`` integer pairs ``(input index, output index)`` in the weight's
            order (or a boolean ``(in_features, out_features)`` mask / SciPy sparse matrix, whose
            pairs are taken row by row).
        bias: ``(O, out_features)`` or None.
        out_features: default: the largest output index + 1 (give it under ``torch.compile``).
        backend: ``"auto"`` (compiled CPU kernels where they run), ``"cpu"`` or ``"torch"``.

    Shape: ``(N, O, out_features)``, without ``N`` for unbatched input and without ``O`` when the
    input had no channel dimension and ``O == 1``.

    Example::

        >>> import torch
        >>> from unshared.sparse import sparsely_connected
        >>> pairs = torch.tensor([[0, 1, 2, 2], [0, 0, 0, 1]])   # inputs 0, 1, 2 -> output 0; 2 -> 1
        >>> y = sparsely_connected(torch.ones(5, 3), torch.ones(4, 1, 1), pairs)
        >>> y.shape, y[0].tolist()
        (torch.Size([5, 2]), [3.0, 1.0])
    """
    if backend not in kernels.BACKENDS:
        raise ValueError(f"sparsely_connected: backend must be one of {kernels.BACKENDS}, got backend={backend!r}")
    if not isinstance(weight, Tensor) or weight.dim() != 3:
        raise ValueError(f"sparsely_connected: weight must be (nnz, out_channels, in_channels), got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    nnz, out_channels, in_channels = weight.shape
    in_features = input.shape[-1]
    pairs = K.as_pairs(connectivity, in_features, out_features, "sparsely_connected")
    if pairs.device != input.device:
        pairs = pairs.to(input.device)
    if pairs.shape[1] != nnz:
        raise ValueError(f"sparsely_connected: the connectivity has {pairs.shape[1]} pairs but the weight "
                         f"{nnz} filters (weight.shape[0])")
    if out_features is None:
        out_features = int(pairs[1].max()) + 1 if nnz else 0
    if _checking():
        K.checked(pairs, in_features, out_features)
    channels = input.dim() == 3 or (input.dim() == 2 and in_channels > 1)
    if input.dim() not in (1, 2, 3) or (input.dim() == 1 and in_channels != 1) or \
            (channels and input.shape[-2] != in_channels):
        raise ValueError(f"sparsely_connected: expected input (N, {in_channels}, {in_features}) or "
                         f"({in_channels}, {in_features}){' or (N, in_features)' * (in_channels == 1)} "
                         f"for a weight of {in_channels} input channels, got {tuple(input.shape)}")
    if input.dtype != weight.dtype:
        raise TypeError(f"sparsely_connected: input ({input.dtype}) and weight ({weight.dtype}) must have one dtype")
    if bias is not None and tuple(bias.shape) != (out_channels, out_features):
        raise ValueError(f"sparsely_connected: bias must have shape (out_channels, out_features) = "
                         f"{(out_channels, out_features)}, got {tuple(bias.shape)}")
    batched = input.dim() == 3 or (input.dim() == 2 and not channels)
    x = input if batched else input.unsqueeze(0)
    x = x if channels else x.unsqueeze(1)
    if _standard_operators():
        y = kernels.forward(x, weight, pairs, in_features, out_features, "torch")
    else:
        y = autograd.call("forward", x, weight, pairs, (in_features, out_features), backend)
    if bias is not None:
        y = y + bias
    if not channels and out_channels == 1:
        y = y.squeeze(1)
    return y if batched else y.squeeze(0)


class SparselyConnected(nn.Module):
    """A layer with one filter per connection of a given sparse graph: GenNet's locally directed
    layer (SNPs -> genes), with channels.

    ``y[n, o, j] = sum over connections e = (i, j) of sum_c weight[e, o, c] * x[n, c, i] + bias[o, j]``.
    A locally connected layer is the case whose connections form windows (:func:`unshared.to_sparse`).

    Args:
        in_features, out_features: sizes of the input and output feature dimensions.
        connectivity: ``(2, nnz)`` integer pairs ``(input index, output index)``, a boolean
            ``(in_features, out_features)`` mask or a SciPy sparse matrix of that shape. Each pair
            at most once; outputs without inputs (bias only) and unconnected inputs are allowed.
        in_channels, out_channels: channels per feature (default 1 each: ``nn.Linear``-like).
        bias: learn ``bias`` (default True).

    Shape:
        ``(N, in_channels, in_features)`` -> ``(N, out_channels, out_features)``; with one
        channel each ``(N, in_features)`` -> ``(N, out_features)``; unbatched input as ``nn.Linear``.

    Attributes:
        connectivity: ``(2, nnz)`` int64 buffer, the pairs sorted by output then input: the order
            of ``weight``'s first dimension (an output's consecutive inputs have consecutive filters).
        weight: ``(nnz, out_channels, in_channels)``, ``U(-1/sqrt(f_j), 1/sqrt(f_j))`` with ``f_j =
            in_channels * (inputs of output j)``, the fan-in of connection ``e``'s output (as
            ``nn.Linear``, per output).
        bias: ``(out_channels, out_features)``, ``U(-1/sqrt(f_j), 1/sqrt(f_j))`` (0 where ``f_j = 0``).

    Example::

        >>> import torch, unshared
        >>> mask = torch.zeros(6, 2, dtype=torch.bool)
        >>> mask[:4, 0] = mask[3:, 1] = True          # SNPs 0-3 -> gene 0, SNPs 3-5 -> gene 1
        >>> layer = unshared.SparselyConnected(6, 2, mask)
        >>> layer
        SparselyConnected(in_features=6, out_features=2, nnz=7)
        >>> layer(torch.randn(8, 6)).shape
        torch.Size([8, 2])
    """

    def __init__(self, in_features: int, out_features: int, connectivity, *, in_channels: int = 1,
                 out_channels: int = 1, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features),
                            ("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if "features" in name else 1):
                raise ValueError(f"SparselyConnected: {name} must be a {'non-negative' * ('features' in name)}"
                                 f"{'positive' * ('channels' in name)} int, got {name}={value!r}")
        self.in_features, self.out_features = in_features, out_features
        self.in_channels, self.out_channels = in_channels, out_channels
        pairs = K.as_pairs(connectivity, in_features, out_features)
        K.check_pairs(pairs, in_features, out_features)
        pairs = K.sort_pairs(pairs.cpu(), in_features)
        self.register_buffer("connectivity", pairs.to(device))
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(pairs.shape[1], out_channels, in_channels, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, out_features, **factory)) if bias else None
        self.register_load_state_dict_post_hook(SparselyConnected._check_loaded)
        self.reset_parameters()

    @property
    def nnz(self) -> int:
        """The number of connections."""
        return self.connectivity.shape[1]

    def fan_in(self) -> Tensor:
        """``(out_features,)`` inputs (times ``in_channels``) of each output."""
        degree = torch.bincount(self.connectivity[1], minlength=self.out_features)
        return degree * self.in_channels

    def reset_parameters(self) -> None:
        """``nn.Linear``'s init per output: ``U(-1/sqrt(f), 1/sqrt(f))`` with ``f`` the fan-in of
        the connection's output (kaiming-uniform with a=sqrt(5)), for weight and bias."""
        if self.connectivity.is_meta:
            return
        bound = self.fan_in().to(torch.float64).clamp(min=1).rsqrt()
        with torch.no_grad():
            e_bound = bound[self.connectivity[1]].to(self.weight.device, self.weight.dtype)
            self.weight.uniform_(-1, 1).mul_(e_bound.view(-1, 1, 1))
            if self.bias is not None:
                b_bound = torch.where(self.fan_in() > 0, bound, 0.0).to(self.bias.device, self.bias.dtype)
                self.bias.uniform_(-1, 1).mul_(b_bound)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            raise ValueError(f"SparselyConnected: expected input (..., {self.in_features}) with in_features="
                             f"{self.in_features} last, got shape {tuple(input.shape)}")
        return sparsely_connected(input, self.weight, self.connectivity, self.bias, self.out_features)

    def extra_repr(self) -> str:
        text = f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}"
        if self.in_channels != 1 or self.out_channels != 1:
            text += f", in_channels={self.in_channels}, out_channels={self.out_channels}"
        return text + (", bias=False" if self.bias is None else "")

    @staticmethod
    def _check_loaded(module, incompatible_keys) -> None:
        """A loaded connectivity obeys the rules of a given one."""
        if not module.connectivity.is_meta:
            K.check_pairs(module.connectivity, module.in_features, module.out_features,
                          "SparselyConnected.load_state_dict")

