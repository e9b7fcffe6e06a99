"""Untie the convolutions of a network, and pull unshared weights back toward sharing.

- :func:`untie`: a copy of a model in which convolutions become the locally connected layers
  that compute the same function (each at the input size it sees), ready to fine-tune.
- :func:`share_weights_`: move every position's filters toward their mean over positions; at
  strength 1 the layer computes a convolution again.
"""
from __future__ import annotations

import copy
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

__all__ = ["untie", "share_weights_", "SHAREABLE"]

_CONV_TYPES = tuple(U.CONV_MODULES.values())

#: Layers :func:`share_weights_` accepts: the leading ``nd`` dimensions of their ``weight`` index
#: output positions (or filter banks), and a ``bias`` of ``nd + 1`` dimensions ends with the same
#: kind of grid (for the transposed layers: input positions, and the output grid for the bias). A
#: new layer kind with this layout is registered by adding its classes here.
SHAREABLE: tuple[type, ...] = (*LOCALLY_CONNECTED.values(), *LOCALLY_CONNECTED_TRANSPOSE.values(), *(
    getattr(sharing, f"{kind}LocallyConnected{nd}d") for kind in ("Tiled", "Region") for nd in (1, 2, 3)))
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


def share_weights_(layer: nn.Module, strength: float = 1.0) -> nn.Module:
    """Move every position's filters (and per-position bias) toward their mean over positions, in place.

    ``w <- (1 - strength) * w + strength * mean_p(w)``, with ``p`` running over the output
    positions of a ``LocallyConnected{1,2,3}d`` (the leading ``nd`` dimensions of ``weight``, the
    trailing ``nd`` of a per-position ``bias``; a shared bias is left as is), or over the filter
    banks of a tiled or region layer (each bank counts once, whatever its number of positions).
    ``strength=1`` makes every position hold the same filters: the layer then computes a
    convolution, and :func:`unshared.to_conv` is exact. The weight keeps its memory layout.

    This is the sharing step of dynamic weight sharing (Pogodin, Mehta, Lillicrap, Latham,
    "Towards biologically plausible convolutional networks", NeurIPS 2021): locally connected
    layers trained with occasional sharing steps approach the convolution's accuracy.

    Args:
        layer: a layer of :data:`SHAREABLE`. Low-rank layers raise ``TypeError``: their weight
            holds basis banks, not one bank per position.
        strength: in ``[0, 1]``; 0 leaves the layer unchanged. Default: 1.

    Returns:
        ``layer``.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LocallyConnected2d(3, 4, 3, input_size=8)
        >>> unshared.share_weights_(layer).weight[0, 0].equal(layer.weight[5, 2])
        True
        >>> unshared.to_conv(layer).max_deviation
        0.0
    """
    name = type(layer).__name__
    if isinstance(layer, _LOW_RANK):
        raise TypeError(f"share_weights_: {name} is not supported: its weight holds {layer.rank} basis "
                        f"filter banks mixed per position by combining weights, not one bank per position")
    if not isinstance(layer, SHAREABLE):
        raise TypeError(f"share_weights_ expects a locally connected (or transposed), tiled or region layer, got {name}")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 <= strength <= 1:
        raise ValueError(f"share_weights_: strength must be a number in [0, 1], got strength={strength!r}")
    if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        raise ValueError(f"share_weights_: the lazy {name} is not initialised yet; run one forward first")
    nd = len(layer.kernel_size)
    targets = [(layer.weight, tuple(range(nd)))]
    if layer.bias is not None and layer.bias.dim() == nd + 1:
        targets.append((layer.bias, tuple(range(1, nd + 1))))
    with torch.no_grad():
        for tensor, positions in targets:
            # lerp at weight 1 returns the end point exactly, so all positions become equal
            tensor.lerp_(tensor.mean(positions, keepdim=True).expand_as(tensor), float(strength))
    return layer
