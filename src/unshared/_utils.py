"""Argument normalisation, output-size arithmetic and input checks.

Everything here is pure Python (plus tensor metadata): no computation on tensor data.
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ._banks import bank_coordinates, build_flat_bank_index, cached_index, check_banks  # noqa: F401 (re-exported)

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


#: The PyTorch layers and functions of each spatial dimensionality (1, 2, 3).
CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_TRANSPOSE_FUNCTIONS = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
CONV_MODULES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE_MODULES = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def ntuple(value, n: int, name: str) -> tuple[int, ...]:
    """Expand an int to an ``n``-tuple, or check that a sequence has ``n`` ints."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if isinstance(value, int):
        return (value,) * n
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = tuple(value)
        if len(items) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
        return items
    raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")


def spatial_ndim(ndim: int | None = None, **sizes) -> int | None:
    """The number of spatial dimensions described by ``sizes`` (keyword: int or tuple each).

    ``ndim`` if given, otherwise the length of the first tuple among ``sizes`` (strings such as
    ``padding="same"`` and ``None`` are skipped); ``None`` when every size is an int. Raises
    ``ValueError`` naming the sizes when ``ndim`` is not 1, 2 or 3 or the tuples disagree.
    """
    if ndim is not None and ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got ndim={ndim!r}")
    lengths = {name: len(v) for name, v in sizes.items() if v is not None and not isinstance(v, (int, str))}
    nd = ndim if ndim is not None else next(iter(lengths.values()), None)
    if any(n != nd for n in lengths.values()):
        named = ", ".join(f"{name}={sizes[name]!r}" for name in lengths)
        raise ValueError(f"sizes of different dimensionality: {named}" + (f", ndim={ndim}" if ndim else ""))
    return nd


def positive(values: tuple[int, ...], name: str) -> tuple[int, ...]:
    if any(v <= 0 for v in values):
        raise ValueError(f"{name} must be positive, got {name}={values}")
    return values


def padding_argument(padding, n: int, name: str = "", strings=("valid", "same", "causal")):
    """``padding`` as a layer keeps it: one of ``strings`` (``"causal"`` in 1d only), or per spatial
    dimension an int or a ``(low, high)`` tuple. Any other form raises ``ValueError`` (``TypeError``:
    neither int nor sequence) naming the value and ``name``; in 1d, ``(0, 4)`` is refused as
    ambiguous, with the suggestion ``((0, 4),)``."""
    where, _is_int = f"{name}: " if name else "", lambda v: isinstance(v, int) and not isinstance(v, bool)
    allowed = tuple(t for t in strings if t != "causal" or n == 1)
    words = " or ".join(", ".join(map(repr, allowed)).rsplit(", ", 1))
    forms = f"an int, a tuple of {n} ints or (low, high) pairs" + (f", {words}" if words else "")
    if isinstance(padding, str):
        if padding in allowed:
            return padding
        if padding == "causal" and "causal" in strings:
            raise ValueError(f"{where}padding='causal' is for 1d layers (dilation * (kernel_size - 1) on the low "
                             f"side); in {n}d give a (low, high) pair per dimension, e.g. padding={((2, 0),) * n}")
        raise ValueError(f"{where}padding must be {forms}, got {padding!r}")
    if _is_int(padding):
        items = (padding,) * n
    elif isinstance(padding, Sequence):
        items = tuple(tuple(p) if isinstance(p, Sequence) and not isinstance(p, str) else p for p in padding)
        if n == 1 and len(items) == 2 and all(map(_is_int, items)):
            raise ValueError(f"{where}padding={padding!r} is ambiguous in 1d: for {items[0]} on the low side and "
                             f"{items[1]} on the high side write padding=({items},); padding must be {forms}")
        if len(items) != n or not all(_is_int(p) or (type(p) is tuple and len(p) == 2 and all(map(_is_int, p)))
                                      for p in items):
            raise ValueError(f"{where}padding must be {forms}, got {padding!r}")
    else:
        raise TypeError(f"{where}padding must be {forms}, got {padding!r}")
    if any(v < 0 for p in items for v in (p if isinstance(p, tuple) else (p,))):
        raise ValueError(f"{where}padding must be non-negative, got padding={items}")
    return items


def padding_pairs(padding) -> tuple[tuple[int, int], ...]:
    """Per dimension ``(low, high)`` of a checked :func:`padding_argument` without strings."""
    return tuple(p if isinstance(p, tuple) else (p, p) for p in padding)


def normalize_padding(padding, kernel_size, stride, dilation, name: str = "") -> tuple[tuple[int, int], ...]:
    """Padding as ``((lo, hi), ...)`` per spatial dimension (:func:`padding_argument` checks it).

    ``"same"`` pads ``d * (k - 1)`` in total, the extra element on the high side (as ``nn.Conv2d``);
    ``"causal"`` (1d) all of it on the low side (as Keras's ``Conv1D``).
    """
    n = len(kernel_size)
    padding = padding_argument(padding, n, name)
    total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
    if padding == "valid":
        return ((0, 0),) * n
    if padding == "causal":
        return tuple((t, 0) for t in total)
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError(f"{name + ': ' if name else ''}padding='same' requires stride 1, got stride={stride}")
        return tuple((t // 2, t - t // 2) for t in total)
    return padding_pairs(padding)


def transpose_padding(padding, n: int, name: str = "") -> tuple[tuple[int, int], ...]:
    """A transposed layer's ``padding`` (no strings, as ``nn.ConvTranspose``) as ``((lo, hi), ...)``:
    what its output loses on each side, the padding of the layer it is the adjoint of."""
    return padding_pairs(padding_argument(padding, n, name, strings=()))


#: The largest padded input size (``input_size + padding`` on both sides), kernel size, stride and
#: dilation per dimension. Every coordinate a kernel computes (``o * stride - padding + k *
#: dilation``, ``i + padding - k * dilation``, the padded sizes themselves) then lies below 2^33, far
#: from int64 overflow, on every backend: a larger value is refused, never computed wrong.
MAX_EXTENT = 2**31 - 1


def check_extents(input_size, kernel_size, stride, padding, dilation) -> None:
    """``ValueError`` naming the value when a size, the padding, the stride or the dilation
    passes :data:`MAX_EXTENT` (``padding``: ``((lo, hi), ...)``)."""
    for name, values in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if any(v > MAX_EXTENT for v in values):
            raise ValueError(f"{name}={tuple(values)} is too large: at most {MAX_EXTENT} per dimension")
    padded = tuple(i + lo + hi for i, (lo, hi) in zip(input_size, padding))
    if any(p > MAX_EXTENT for p in padded):
        shown = tuple(lo if lo == hi else (lo, hi) for lo, hi in padding)
        raise ValueError(f"padding={shown} with input_size={tuple(input_size)} is too large: the padded input "
                         f"size {padded} must be at most {MAX_EXTENT} per dimension")


def output_size(input_size, kernel_size, stride, padding, dilation) -> tuple[int, ...]:
    """``floor((i + lo + hi - d * (k - 1) - 1) / s) + 1`` per dimension.

    Raises ``ValueError`` when the (dilated) kernel is larger than the padded input, or when a
    value passes :data:`MAX_EXTENT`.
    """
    check_extents(input_size, kernel_size, stride, padding, dilation)
    out = []
    for i, k, s, (lo, hi), d in zip(input_size, kernel_size, stride, padding, dilation):
        span = d * (k - 1) + 1
        if i + lo + hi < span:
            raise ValueError(
                f"kernel larger than the padded input: kernel_size={tuple(kernel_size)}, "
                f"dilation={tuple(dilation)} spans {span} but input_size={tuple(input_size)} "
                f"with padding={tuple(padding)} gives {i + lo + hi}"
            )
        out.append((i + lo + hi - span) // s + 1)
    return tuple(out)


def transposed_output_size(input_size, kernel_size, stride, padding, output_padding, dilation) -> tuple[int, ...]:
    """``(i - 1) * s - lo - hi + d * (k - 1) + output_padding + 1`` per dimension (``nn.ConvTranspose``
    with ``lo = hi = p``; ``padding``: an int or a ``(lo, hi)`` pair per dimension).

    Raises ``ValueError`` when a value passes :data:`MAX_EXTENT` (the output is the input of the
    locally connected layer this one is the adjoint of)."""
    pairs = padding_pairs(padding)
    out = tuple((i - 1) * s - lo - hi + d * (k - 1) + op + 1
                for i, k, s, (lo, hi), op, d in zip(input_size, kernel_size, stride, pairs, output_padding, dilation))
    check_extents(out, kernel_size, stride, pairs, dilation)
    return out


def check_padding_mode(padding_mode: str) -> str:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got padding_mode={padding_mode!r}")
    return padding_mode


def check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    if not isinstance(groups, int) or isinstance(groups, bool) or groups <= 0:
        raise ValueError(f"groups must be a positive int, got groups={groups!r}")
    if in_channels % groups:
        raise ValueError(f"in_channels must be divisible by groups, got {in_channels=}, {groups=}")
    if out_channels % groups:
        raise ValueError(f"out_channels must be divisible by groups, got {out_channels=}, {groups=}")


def check_channels(name: str, in_channels, out_channels, lazy: bool = False) -> None:
    """Channel counts are positive ints (a lazy layer's ``in_channels`` is 0 until its first input)."""
    for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name}: {arg} must be an int, got {value!r}")
        if value <= 0 and not (lazy and arg == "in_channels"):
            raise ValueError(f"{name}: {arg} must be positive, got {arg}={value}")


def traceable(fn):
    """``fn`` without the tracer warnings of its own checks while ``torch.jit.trace`` traces.

    The tracer turns every size into a traced value, so each shape check warns that it "might not
    generalize"; but the checks read only the channel and spatial sizes, which the weight fixes,
    never the batch size, which the traced graph keeps free. Warnings from other code still show.
    """
    @functools.wraps(fn)
    def quiet(*args, **kwargs):
        if not torch.jit.is_tracing():
            return fn(*args, **kwargs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"unshared\.")
            return fn(*args, **kwargs)

    return quiet


@traceable
def check_layer_input(name: str, input, nd: int, in_channels: int, input_size) -> None:
    """A layer's own sizes, named when the input does not fit (the functional form checks the rest)."""
    if isinstance(input, torch.Tensor) and input.dim() in (nd + 1, nd + 2):
        spatial, channels = tuple(input.shape[-nd:]), input.shape[-nd - 1]
        if channels != in_channels:
            raise ValueError(f"{name}: expected {in_channels} input channels, got {channels} in input of shape "
                             f"{tuple(input.shape)}")
        if spatial != input_size:
            raise ValueError(f"{name}: built for input_size={input_size}, got input of spatial size {spatial}")


def dimension_names(nd: int) -> dict[str, str]:
    """Docstring fragments: ``dims`` (``H_in, W_in``), ``odims`` and ``kdims`` for ``nd`` dimensions."""
    letters = ["D", "H", "W"][3 - nd:]
    return dict(dims=", ".join(f"{l}_in" for l in letters), odims=", ".join(f"{l}_out" for l in letters),
                kdims=", ".join(f"k{l}" for l in letters))


def fan_in(in_channels: int, groups: int, kernel_size) -> int:
    """Per-position fan-in: ``in_channels / groups * prod(kernel_size)`` (never times positions)."""
    return in_channels // groups * math.prod(kernel_size)


@dataclass(frozen=True)
class Geometry:
    """Everything about one locally connected call that does not depend on tensor data.

    ``padding`` means zeros (other padding modes are applied before). With weight sharing,
    ``banks[d][i]`` is the filter-bank coordinate along dimension ``d`` of output coordinate ``i``
    and the weight's leading dimensions are the bank grid ``weight_grid``; the bank of an output
    position is the flat (row-major) index of its coordinates in that grid.
    """

    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    in_channels: int
    out_channels: int
    #: the bank grid (the weight's leading dimensions), with ``banks``; ``None``: the output grid
    weight_grid: tuple[int, ...] | None = None
    banks: tuple[tuple[int, ...], ...] | None = None

    @property
    def weight_leading(self) -> tuple[int, ...]:
        """The leading dimensions of the weight: the output grid, or the bank grid."""
        return self.output_size if self.weight_grid is None else self.weight_grid

    def encode(self) -> list[int]:
        """A flat list of ints (what a ``torch.library`` op can take); :meth:`decode` inverts it."""
        nd = self.ndim
        shared = [] if self.banks is None else [*self.weight_grid, *(b for dim in self.banks for b in dim)]
        return [nd, *self.input_size, *self.output_size, *self.kernel_size, *self.stride,
                *(p for pair in self.padding for p in pair), *self.dilation, self.groups,
                self.in_channels, self.out_channels, *shared]

    @classmethod
    def decode(cls, values) -> "Geometry":
        nd, rest = values[0], list(values[1:])

        def take(count):
            items = tuple(rest[:count])
            del rest[:count]
            return items

        input_size, output_size, kernel_size, stride = take(nd), take(nd), take(nd), take(nd)
        flat = take(2 * nd)
        padding = tuple(zip(flat[::2], flat[1::2]))
        dilation = take(nd)
        groups, in_channels, out_channels = take(3)
        weight_grid = take(nd) or None
        banks = tuple(take(o) for o in output_size) if weight_grid else None
        return cls(input_size, output_size, kernel_size, stride, padding, dilation, groups, in_channels,
                   out_channels, weight_grid, banks)

    @property
    def ndim(self) -> int:
        return len(self.kernel_size)

    @property
    def padded_size(self) -> tuple[int, ...]:
        return tuple(i + lo + hi for i, (lo, hi) in zip(self.input_size, self.padding))

    @property
    def positions(self) -> int:
        return math.prod(self.output_size)

    @property
    def kernel_volume(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def bank_count(self) -> int:
        """Filter banks in the weight (one per position without sharing)."""
        return math.prod(self.weight_leading)

    def untraced(self) -> "Geometry":
        """This geometry in plain ints. Under ``torch.jit.trace`` the sizes it was built from are
        traced values, whose arithmetic would be recorded as graph operators; every size here is
        fixed by the weight (the batch size, which stays free, is not among them)."""
        if not torch.jit.is_tracing():
            return self
        return Geometry.decode([int(v) for v in self.encode()])

    def unpadded(self, input_size) -> "Geometry":
        """This geometry for an input that was padded already (by a non-zero padding mode)."""
        return replace(self, input_size=tuple(input_size), padding=((0, 0),) * self.ndim)


def flat_bank_index(g: Geometry, device) -> torch.Tensor | None:
    """``(positions,)`` int64 flat bank of every output position (row-major), on ``device``;
    ``None`` without sharing. Built once per geometry and device, then reused."""
    if g.banks is None:
        return None
    return cached_index(("flat", g.banks, g.weight_grid, torch.device(device)), build_flat_bank_index)


# ---------------------------------------------------------------------------------------------
# Weight layouts. Public shape: (*grid, out_channels, in_channels // groups, *kernel_size), where
# the grid is the output grid (or the filter banks). Each filter bank is one row of R =
# prod(kernel_size) * in_channels // groups elements; the backends read either order of R
# without a copy:
# - kernel-major, (*grid, out_channels, *kernel_size, in_channels // groups) contiguous: a
#   gathered patch (kernel offsets, then channels) is one contiguous run of a channels-last input;
# - channel-major: the public shape contiguous, as torch.empty makes it (and as FSDP2 needs).
# ---------------------------------------------------------------------------------------------

def public_to_storage_perm(nd: int) -> tuple[int, ...]:
    """Permutation taking a public-shaped weight to the kernel-major order."""
    return (*range(nd + 1), *range(nd + 2, 2 * nd + 2), nd + 1)


def storage_to_public_perm(nd: int) -> tuple[int, ...]:
    """Permutation taking a kernel-major weight to the public shape."""
    return (*range(nd + 1), 2 * nd + 1, *range(nd + 1, 2 * nd + 1))


def is_kernel_major(weight: torch.Tensor) -> bool:
    """Whether a public-shaped weight is laid out kernel-major (see above)."""
    return weight.permute(public_to_storage_perm((weight.dim() - 2) // 2)).is_contiguous()


def weight_memory(weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The weight's memory as a contiguous tensor (kernel-major order, or the public shape), and
    whether it is kernel-major. Free for either layout; one copy for any other strides."""
    storage = weight.permute(public_to_storage_perm((weight.dim() - 2) // 2))
    return (storage, True) if storage.is_contiguous() else (weight.contiguous(), False)


def empty_weight(public_shape, nd: int, *, kernel_major: bool = False, dtype=None, device=None,
                 allocate=torch.empty) -> torch.Tensor:
    """An uninitialised weight with the public shape, channel-major (contiguous) or kernel-major.

    ``allocate(shape, dtype=, device=)`` makes the memory (``torch.empty`` by default).
    """
    if not kernel_major:
        return allocate(tuple(public_shape), dtype=dtype, device=device)
    storage_shape = [public_shape[i] for i in public_to_storage_perm(nd)]
    return allocate(storage_shape, dtype=dtype, device=device).permute(storage_to_public_perm(nd))


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``channels_last``/``channels_last_3d`` when ``x`` uses it (and is not plain contiguous):
    outputs and input gradients keep the input's layout."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format
