"""Untie the convolutions of a network, and pull unshared weights back toward sharing.

- :func:`untie`: a copy of a model in which convolutions become the locally connected layers
  that compute the same function (each at the input size it sees), ready to fine-tune.
- :func:`share_weights_`: move every position's filters toward their mean over positions (at
  strength 1 the layer computes a convolution again), or over the positions of each residue class
  modulo a ``period`` (Pogodin et al.'s dynamic weight sharing);
- :func:`share_every`: :func:`share_weights_` after every ``every``-th step of an optimizer.
"""
from __future__ import annotations

import copy
import itertools
import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from . import _utils as U
from . import lowrank, sharing
from .conversions import from_conv
from .modules import LOCALLY_CONNECTED
from .transposed import LOCALLY_CONNECTED_TRANSPOSE

__all__ = ["untie", "share_weights_", "share_every", "ShareSchedule", "SHAREABLE"]

_CONV_TYPES = tuple(U.CONV_MODULES.values())

_BANKED = tuple(getattr(sharing, f"{kind}LocallyConnected{nd}d") for kind in ("Tiled", "Region") for nd in (1, 2, 3))
#: Layers :func:`share_weights_` accepts: the leading ``nd`` dimensions of their ``weight`` index
#: output positions (or filter banks), and a ``bias`` of ``nd + 1`` dimensions ends with the same
#: kind of grid (for the transposed layers: input positions, and the output grid for the bias). A
#: new layer kind with this layout is registered by adding its classes here.
SHAREABLE: tuple[type, ...] = (*LOCALLY_CONNECTED.values(), *LOCALLY_CONNECTED_TRANSPOSE.values(), *_BANKED)
_LOW_RANK = tuple(getattr(lowrank, f"LowRankLocallyConnected{nd}d") for nd in (1, 2, 3))


def untie(model: nn.Module, example_input, *, include=None) -> nn.Module:
    """A deep copy of ``model`` whose convolutions are replaced by ``LocallyConnected{1,2,3}d``
    layers computing the same function (:func:`unshared.from_conv`).

    ``example_input`` (a tensor, or a tuple of positional arguments) runs once through the copy,
    in eval mode and under ``torch.no_grad()``, to find the spatial size each convolution sees;
    the training flags are then restored. ``model`` itself is not modified.

    Args:
        model: any module; every ``nn.Conv1d/2d/3d`` in it (exactly these types: a subclass may
            compute something else and is left as is, with a warning) is a candidate.
        example_input: an input of the size the untied model will take.
        include: qualified module names (as in ``model.named_modules()``) to untie; default: all
            convolutions. An unknown name raises ``ValueError``, a name that is not a convolution
            ``TypeError``.

    Returns:
        The copy. A convolution registered under several names becomes one shared layer; its
        parameters keep the conv's ``requires_grad``. A convolution that ``example_input`` never
        reaches stays a convolution (with a warning; ``ValueError`` if it is in ``include``); one
        called on two input sizes raises ``ValueError``, since a locally connected layer has one.

    Example::

        >>> import torch, unshared
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 8, 3, stride=2))
        >>> x = torch.randn(2, 3, 16, 16)
        >>> untied = unshared.untie(net, x)
        >>> [type(m).__name__ for m in untied]
        ['LocallyConnected2d', 'ReLU', 'LocallyConnected2d']
        >>> untied[2].input_size, torch.allclose(untied(x), net(x), atol=1e-6)
        ((16, 16), True)
    """
    model = copy.deepcopy(model)
    places: dict[int, list[str]] = {}   # every name under which each conv is registered
    convs: dict[int, nn.Module] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, _CONV_TYPES):
            places.setdefault(id(module), []).append(name)
            convs[id(module)] = module
    if include is not None:
        include = [include] if isinstance(include, str) else list(include)
        modules = dict(model.named_modules(remove_duplicate=False))
        for name in include:
            if name not in modules:
                known = sorted(n for ns in places.values() for n in ns)
                raise ValueError(f"untie: include names {name!r}, which is not a module of the model "
                                 f"(its convolutions: {', '.join(map(repr, known[:8]))}"
                                 f"{', ...' if len(known) > 8 else ''})")
            if not isinstance(modules[name], _CONV_TYPES):
                raise TypeError(f"untie: include names {name!r}, a {type(modules[name]).__name__}, "
                                f"not an nn.Conv1d/2d/3d")
        wanted = {id(modules[name]) for name in include}
        convs = {key: m for key, m in convs.items() if key in wanted}

    sizes = _input_sizes(model, convs, example_input)
    for key, conv in convs.items():
        name, seen = places[key][0], sizes.get(key, set())
        if not seen:
            if include is not None:
                raise ValueError(f"untie: example_input never reaches {name!r}, so its input size is unknown")
            warnings.warn(f"untie: example_input never reaches {name!r}; left as a convolution", stacklevel=2)
            continue
        if type(conv) not in _CONV_TYPES:   # a subclass (a lazy conv has become its base class by now)
            if include is not None:
                raise TypeError(f"untie: {name!r} is a {type(conv).__name__}, a subclass of an nn.Conv "
                                f"that from_conv cannot convert")
            warnings.warn(f"untie: {name!r} is a {type(conv).__name__}, not exactly an nn.Conv1d/2d/3d; "
                          f"left as is", stacklevel=2)
            continue
        if len(seen) > 1:
            raise ValueError(f"untie: {name!r} is called on inputs of spatial sizes {sorted(seen)}; a "
                             f"locally connected layer has one input size")
        layer = from_conv(conv, next(iter(seen)))
        layer.train(conv.training)
        for new, old in zip(layer.parameters(), conv.parameters()):
            new.requires_grad_(old.requires_grad)
        for place in places[key]:
            if not place:
                return layer   # the model is the convolution itself
            parent, _, child = place.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
    return model


def _input_sizes(model: nn.Module, convs: dict[int, nn.Module], example_input) -> dict[int, set]:
    """Run ``example_input`` through ``model`` (eval mode, no grad) and collect each conv's input sizes."""
    sizes: dict[int, set] = {}

    def record(module, args, kwargs):
        x = args[0] if args else kwargs.get("input")
        if isinstance(x, Tensor):
            sizes.setdefault(id(module), set()).add(tuple(x.shape[-len(module.kernel_size):]))

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in convs.values()]
    modes = {m: m.training for m in model.modules()}
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        model.eval()
        with torch.no_grad():
            model(*args)
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in modes.items():
            module.training = mode
    return sizes


def share_weights_(layer: nn.Module, strength: float = 1.0, *, period=None) -> nn.Module:
    """Move filters (and per-position biases) toward the mean over positions, in place.

    ``w <- (1 - strength) * w + strength * mean(w)``, the mean taken over the positions of a
    ``LocallyConnected{1,2,3}d`` (the leading ``nd`` dimensions of ``weight``, the trailing ``nd``
    of a per-position ``bias``; a shared bias is left as is) or of a transposed layer (its input
    positions; the bias over its output grid), or over the filter banks of a tiled or region layer
    (each bank counts once, whatever its number of positions):

    - ``period=None``: the mean over all positions. At ``strength=1`` every position holds the
      same filters: the layer computes a convolution, and :func:`unshared.to_conv` is exact.
    - ``period=p``: positions whose coordinates agree modulo ``p`` form a class, and each class
      moves toward its own mean. At ``strength=1`` the layer holds ``prod(p)`` filter banks laid
      out periodically (a tiled layer, Le et al. 2010). ``period=layer.kernel_size`` is the
      instant sharing step of dynamic weight sharing (Pogodin, Mehta, Lillicrap, Latham,
      "Towards biologically plausible convolutional networks", NeurIPS 2021: their
      ``share_weights_instantly`` every few optimizer steps, :func:`share_every`); ``period=None``
      is not their rule. The grid need not be a multiple of ``p``; a period at least the grid's
      size leaves that dimension unshared.

    The tensors are updated in place and keep their memory layout (kernel-major or not).

    Args:
        layer: a layer of :data:`SHAREABLE`. Low-rank layers raise ``TypeError``: their weight
            holds basis banks, not one bank per position; so do tiled and region layers given a
            ``period`` (their banks are not positions).
        strength: in ``[0, 1]``; 0 leaves the layer unchanged. Default: 1.
        period: ``None``, an int or one int per spatial dimension, each at least 1. Default: ``None``.

    Returns:
        ``layer``.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LocallyConnected2d(3, 4, 3, input_size=8)
        >>> unshared.share_weights_(layer).weight[0, 0].equal(layer.weight[5, 2])
        True
        >>> unshared.to_conv(layer).max_deviation
        0.0
        >>> layer = unshared.LocallyConnected2d(3, 4, 3, input_size=9)          # 7 x 7 positions
        >>> w = unshared.share_weights_(layer, period=3).weight                 # Pogodin et al.
        >>> w[0, 1].equal(w[6, 4]), w[0, 1].equal(w[0, 2])
        (True, False)
    """
    period = _check_shareable(layer, strength, period, "share_weights_")
    nd = len(layer.kernel_size)
    targets = [(layer.weight, tuple(range(nd)))]
    if layer.bias is not None and layer.bias.dim() == nd + 1:
        targets.append((layer.bias, tuple(range(1, nd + 1))))
    with torch.no_grad():
        for tensor, positions in targets:
            if period is None:
                # lerp at weight 1 returns the end point exactly, so all positions become equal
                tensor.lerp_(tensor.mean(positions, keepdim=True).expand_as(tensor), float(strength))
            else:
                _share_residue_classes_(tensor.movedim(positions, tuple(range(nd))), period, float(strength))
    return layer


def _check_shareable(layer: nn.Module, strength, period, caller: str, *, initialised: bool = True):
    """Check ``share_weights_``'s arguments; returns ``period`` as one int per spatial dimension (or ``None``)."""
    name = type(layer).__name__
    if isinstance(layer, _LOW_RANK):
        raise TypeError(f"{caller}: {name} is not supported: its weight holds {layer.rank} basis "
                        f"filter banks mixed per position by combining weights, not one bank per position")
    if not isinstance(layer, SHAREABLE):
        raise TypeError(f"{caller} expects a locally connected (or transposed), tiled or region layer, got {name}")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 <= strength <= 1:
        raise ValueError(f"{caller}: strength must be a number in [0, 1], got strength={strength!r}")
    if initialised and isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        raise ValueError(f"{caller}: the lazy {name} is not initialised yet; run one forward first")
    if period is None:
        return None
    if isinstance(layer, _BANKED):
        raise TypeError(f"{caller}: period={period!r} has no meaning for {name}: its weight holds filter "
                        f"banks, not positions (share over its banks with period=None)")
    nd = len(layer.kernel_size)
    values = (period,) * nd if isinstance(period, numbers.Integral) else period
    try:
        values = tuple(values)
    except TypeError:
        values = None
    if (values is None or len(values) != nd
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values)):
        raise ValueError(f"{caller}: period must be None, an int or {nd} ints (one per spatial dimension "
                         f"of {name}), got period={period!r}")
    if min(values) < 1:
        raise ValueError(f"{caller}: period must be at least 1 in every dimension, got period={period!r} for {name}")
    return tuple(int(v) for v in values)


def _share_residue_classes_(tensor: Tensor, period: tuple[int, ...], strength: float) -> None:
    """``tensor`` (grid dimensions first, any strides) moves in place toward its residue-class means.

    Each grid dimension of size ``n`` splits into the full blocks ``[0, n // p * p)``, viewed as
    ``(n // p, p)``, and a remainder ``[n // p * p, n)``, viewed as ``(1, n % p)``; the corner pieces
    of these splits are views of ``tensor`` whose odd dimensions are the residues, so the class sums
    and the update are a few reductions and ``lerp_`` calls, without copying ``tensor``.
    """
    nd = len(period)
    grid, rest = tensor.shape[:nd], tensor.shape[nd:]
    period = tuple(min(p, n) for p, n in zip(period, grid))
    splits = []
    for n, p in zip(grid, period):
        full = n // p * p
        splits.append([(slice(0, full), n // p, p)] + ([(slice(full, n), 1, n - full)] if n > full else []))
    pieces = []
    for parts in itertools.product(*splits):
        piece = tensor[tuple(part[0] for part in parts)]
        for d, (_, blocks, width) in enumerate(parts):
            piece = piece.unflatten(2 * d, (blocks, width))
        pieces.append((piece, tuple(part[2] for part in parts)))
    accumulate = torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype
    sums = torch.zeros((*period, *rest), dtype=accumulate, device=tensor.device)
    blocks_dims = tuple(range(0, 2 * nd, 2))
    for piece, widths in pieces:
        sums[tuple(slice(0, w) for w in widths)] += piece.sum(blocks_dims, dtype=accumulate)
    counts = torch.ones((), dtype=accumulate, device=tensor.device)
    for d, (n, p) in enumerate(zip(grid, period)):
        residues = torch.arange(p, device=tensor.device)
        count = (n // p + (residues < n % p)).to(accumulate)
        counts = counts.unsqueeze(-1) * count
    means = (sums / counts.reshape(*period, *(1,) * len(rest))).to(tensor.dtype)
    for piece, widths in pieces:
        target = means[tuple(slice(0, w) for w in widths)]
        for d in range(nd):
            target = target.unsqueeze(2 * d)
        piece.lerp_(target.expand_as(piece), strength)


class ShareSchedule:
    """The handle :func:`share_every` returns: ``steps`` counts the optimizer steps taken since it
    started (or as loaded), ``remove()`` stops the sharing, and ``state_dict()`` /
    ``load_state_dict()`` carry the count across a checkpoint."""

    def __init__(self, optimizer, layers: list[nn.Module], every: int, strength: float, period) -> None:
        self.layers, self.every, self.strength, self.period = layers, every, strength, period
        self.steps = 0
        self._handle = optimizer.register_step_post_hook(self._after_step)

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            for layer in self.layers:
                share_weights_(layer, self.strength, period=self.period)

    def remove(self) -> None:
        """Stop sharing (the optimizer's hook is removed)."""
        self._handle.remove()

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        steps = state.get("steps") if isinstance(state, dict) else None
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f"ShareSchedule.load_state_dict expects {{'steps': a count >= 0}}, got {state!r}")
        self.steps = int(steps)

    def __repr__(self) -> str:
        return (f"ShareSchedule(every={self.every}, steps={self.steps}, layers={len(self.layers)}, "
                f"strength={self.strength}, period={self.period})")


def share_every(optimizer: torch.optim.Optimizer, layers, every: int, *, strength: float = 1.0,
                period=None) -> ShareSchedule:
    """Apply :func:`share_weights_` to ``layers`` after every ``every``-th ``optimizer.step()``.

    Dynamic weight sharing (Pogodin et al., NeurIPS 2021) trains locally connected layers with a
    sharing step every few optimizer steps (10 in their experiments, with ``period`` the kernel
    size); this registers that step as an optimizer step post-hook. Steps that do not happen
    (skipped by ``torch.amp.GradScaler`` on overflow) do not count.

    Args:
        optimizer: a ``torch.optim.Optimizer``.
        layers: a layer, or a non-empty iterable of layers, each one :func:`share_weights_`
            accepts with this ``strength`` and ``period`` (checked now; lazy layers may initialise later).
        every: steps between two sharing steps, at least 1: the layers are shared after steps
            ``every``, ``2 * every``, ...
        strength, period: as for :func:`share_weights_`. Defaults: 1 and ``None``.

    Returns:
        A :class:`ShareSchedule`: ``remove()`` stops it; ``state_dict()`` / ``load_state_dict()``
        save and restore the step count, so that a resumed run shares on the same steps.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LocallyConnected2d(3, 4, 3, input_size=8)
        >>> opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        >>> schedule = unshared.share_every(opt, [layer], every=10, period=layer.kernel_size)
        >>> for step in range(10):
        ...     layer(torch.randn(2, 3, 8, 8)).square().mean().backward()
        ...     opt.step(); opt.zero_grad()
        >>> schedule.state_dict(), layer.weight[0, 0].equal(layer.weight[3, 3])
        ({'steps': 10}, True)
        >>> schedule.remove()
    """
    if not callable(getattr(optimizer, "register_step_post_hook", None)):
        raise TypeError(f"share_every expects a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
        raise ValueError(f"share_every: every must be an int >= 1 (optimizer steps between sharing steps), "
                         f"got every={every!r}")
    layers = [layers] if isinstance(layers, SHAREABLE) else list(layers)
    if not layers:
        raise ValueError("share_every: layers is empty; give the layers to share")
    for index, layer in enumerate(layers):
        try:
            _check_shareable(layer, strength, period, "share_every", initialised=False)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{error} (layers[{index}])") from None
    return ShareSchedule(optimizer, layers, int(every), strength, period)
