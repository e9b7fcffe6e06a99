"""Bring locally connected weights from Keras and JAX/Flax into PyTorch.

- :func:`from_keras`: a ``tf_keras.layers.LocallyConnected1D/2D`` layer, or its ``get_config()`` dict
  and ``get_weights()`` list (no TensorFlow needed), any ``implementation`` (1, 2, 3), either
  ``data_format``.
- :func:`from_flax`: ``flax.linen.ConvLocal`` parameters (channels-last, kernel
  ``(*output_size, in_channels * prod(kernel_size), features)``).
- :func:`from_lax`: the ``rhs`` of ``jax.lax.conv_general_dilated_local`` (default dimension
  numbers: ``(out_channels, in_channels * prod(filter_shape), *output_size)``).

Each returns an :class:`unshared.LocallyConnected1d/2d/3d` computing the same function on
**channels-first** input ``(N, C, *spatial)``; wrapped in ``nn.Sequential`` (children ``pad``,
``local``, ``activation``) only when the source pads unevenly or applies an activation.
Nothing here imports TensorFlow, Keras, JAX, Flax or numpy at import time: objects are read by
duck typing (``get_config``/``get_weights``, ``np.asarray``), numpy only when handed arrays.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from . import _utils as U
from .modules import LocallyConnected1d, LocallyConnected2d, LocallyConnected3d

__all__ = ["from_keras", "from_flax", "from_lax"]

_LOCAL = {1: LocallyConnected1d, 2: LocallyConnected2d, 3: LocallyConnected3d}
_PAD = {
    "zeros": {1: nn.ZeroPad1d, 2: nn.ZeroPad2d, 3: nn.ZeroPad3d},
    "circular": {1: nn.CircularPad1d, 2: nn.CircularPad2d, 3: nn.CircularPad3d},
    "reflect": {1: nn.ReflectionPad1d, 2: nn.ReflectionPad2d, 3: nn.ReflectionPad3d},
}
_KERAS_CLASSES = {"LocallyConnected1D": 1, "LocallyConnected2D": 2}


# ------------------------------------------------------------------------------------------------
# shared helpers
# ------------------------------------------------------------------------------------------------
def _as_tensor(array, name: str) -> Tensor:
    """A CPU tensor holding ``array`` (torch tensor, numpy/JAX array, TF variable, nested list)."""
    if isinstance(array, Tensor):
        return array.detach().cpu()
    import numpy as np

    a = np.asarray(array)
    if a.dtype.name == "bfloat16":                 # ml_dtypes (JAX): no torch.from_numpy for it
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype} (shape {a.shape})")
    a = np.ascontiguousarray(a) if a.flags.writeable else np.array(a, order="C")   # JAX's are read-only
    return torch.from_numpy(a)


def _ints(value, n: int, name: str) -> tuple[int, ...]:
    """``value`` (int or sequence of ``n`` ints) as an ``n``-tuple of ints."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
    if isinstance(value, int):
        return (value,) * n
    try:
        out = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of {n} ints, got {value!r}") from None
    if len(out) == 1 and n > 1:
        out = out * n
    if len(out) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
    return out


def _build(weight: Tensor, bias: Tensor | None, *, stride, pads, dilation, input_size,
           padding_mode: str = "zeros", dtype=None, activation: nn.Module | None = None,
           source: str) -> nn.Module:
    """The ``LocallyConnectedNd`` (wrapped as needed) holding ``weight`` ``(*grid, O, C, *k)``.

    Even padding goes into the layer; uneven ``pads`` become a ``pad`` module in front of it.
    """
    nd = (weight.dim() - 2) // 2
    grid, out_channels, in_channels, kernel = (weight.shape[:nd], weight.shape[nd],
                                               weight.shape[nd + 1], tuple(weight.shape[nd + 2:]))
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        raise ValueError(f"{source}: negative padding {pads} is not supported")
    expected = U.output_size(input_size, kernel, stride, pads, dilation)
    if expected != tuple(grid):
        raise ValueError(
            f"{source}: the weights hold an output grid of {tuple(grid)} positions, but input_size="
            f"{tuple(input_size)} with kernel_size={kernel}, strides={tuple(stride)}, padding={pads}, "
            f"dilation={tuple(dilation)} gives {expected}; check input_size and the layer's settings")
    dtype = weight.dtype if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"{source}: the weights must be floating point, got dtype={dtype}")
    modules: list[tuple[str, nn.Module]] = []
    if all(lo == hi for lo, hi in pads):
        padding, size = tuple(lo for lo, _ in pads), tuple(input_size)
    else:
        flat = [p for lo_hi in reversed(pads) for p in lo_hi]    # torch order: last dim first
        modules.append(("pad", _PAD[padding_mode][nd](tuple(flat))))
        padding, size, padding_mode = 0, tuple(i + lo + hi for i, (lo, hi) in zip(input_size, pads)), "zeros"
    layer = _LOCAL[nd](in_channels, out_channels, kernel, stride, padding, dilation, bias=bias is not None,
                       padding_mode=padding_mode, dtype=dtype, input_size=size)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    modules.append(("local", layer))
    if activation is not None:
        modules.append(("activation", activation))
    return layer if len(modules) == 1 else nn.Sequential(OrderedDict(modules))


def _check_shape(array: Tensor, expected: tuple[int, ...], what: str, source: str, note: str = "") -> None:
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"{source}: expected {what} of shape {tuple(expected)}, "
                         f"got {tuple(array.shape)}{note}")


# ------------------------------------------------------------------------------------------------
# Keras
# ------------------------------------------------------------------------------------------------
def _keras_activation(name, data_format: str) -> nn.Module | None:
    if isinstance(name, Mapping):                  # serialized form {"class_name": ..., "config": "relu"}
        inner = name.get("config")
        name = inner if isinstance(inner, str) else inner.get("name") if isinstance(inner, Mapping) else name
    if name is None or name == "linear":
        return None
    table = {
        "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU, "selu": nn.SELU,
        "softplus": nn.Softplus, "softsign": nn.Softsign, "swish": nn.SiLU, "silu": nn.SiLU,
        "gelu": nn.GELU, "mish": nn.Mish, "relu6": nn.ReLU6,
        "leaky_relu": lambda: nn.LeakyReLU(0.2),    # tf.nn.leaky_relu's default slope
    }
    # softmax, log_softmax: Keras takes the last axis, the channels only for channels_last
    if name in ("softmax", "log_softmax"):
        dim = 1 if data_format == "channels_last" else -1
        return nn.Softmax(dim) if name == "softmax" else nn.LogSoftmax(dim)
    if name not in table:
        raise ValueError(f"from_keras: unsupported activation {name!r}; supported: "
                         f"{sorted(['linear', 'softmax', 'log_softmax', *table])} (convert the layer "
                         f"with activation='linear' and apply yours after it)")
    return table[name]()


def _keras_input_shape(layer_or_config, config: Mapping):
    """``batch_input_shape`` from a layer object or a (serialized) config, or None."""
    for key in ("batch_input_shape", "batch_shape"):
        if config.get(key) is not None:
            return list(config[key])
    if isinstance(layer_or_config, Mapping):
        build = layer_or_config.get("build_config")
        if isinstance(build, Mapping) and build.get("input_shape") is not None:
            return list(build["input_shape"])
        return None
    shape = None
    if hasattr(layer_or_config, "get_build_config"):
        build = layer_or_config.get_build_config() or {}
        shape = build.get("input_shape")
    if shape is None:
        shape = getattr(layer_or_config, "_build_input_shape", None)
    if shape is None:
        return None
    return list(shape.as_list() if hasattr(shape, "as_list") else shape)


def _keras_parse(layer_or_config, weights):
    """(config, weights list, input shape or None) from any accepted form of the Keras layer."""
    if isinstance(layer_or_config, Mapping):
        outer = layer_or_config
        if "config" in outer and isinstance(outer["config"], Mapping):
            class_name = outer.get("class_name")
            config = outer["config"]
        else:
            class_name, config = outer.get("class_name"), outer
        if class_name is not None and class_name not in _KERAS_CLASSES:
            raise ValueError(f"from_keras: expected a LocallyConnected1D or LocallyConnected2D config, "
                             f"got class_name={class_name!r}")
        if weights is None:
            raise TypeError("from_keras: a config dict needs its weights: pass weights=layer.get_weights() "
                            "([kernel, bias] or [kernel])")
        return dict(config), weights, _keras_input_shape(outer, config)
    if not (hasattr(layer_or_config, "get_config") and hasattr(layer_or_config, "get_weights")):
        raise TypeError(f"from_keras expects a tf_keras LocallyConnected1D/2D layer or its get_config() "
                        f"dict, got {type(layer_or_config).__name__}")
    class_name = type(layer_or_config).__name__
    if class_name not in _KERAS_CLASSES:
        raise TypeError(f"from_keras expects a LocallyConnected1D or LocallyConnected2D layer, "
                        f"got {class_name}")
    config = dict(layer_or_config.get_config())
    if weights is None:
        weights = layer_or_config.get_weights()
        if not weights:
            raise ValueError(f"from_keras: layer {config.get('name')!r} has no weights yet (not built); "
                             f"call it on an input first, or pass weights=")
    return config, weights, _keras_input_shape(layer_or_config, config)


class _Geometry:
    """Where every (output position, tap) of a Keras layer reads: the index tensors broadcast to the
    public weight layout ``(*P, F, C, *k)``, and whether the input index lies inside the input."""

    def __init__(self, grid, kernel_size, strides, pads, size, filters, in_channels):
        nd = len(grid)
        self.grid, self.size, self.filters, self.in_channels = grid, size, filters, in_channels
        self.full = (*grid, filters, in_channels, *kernel_size)
        self.inputs, self.valid = [], torch.ones((), dtype=torch.bool)
        for d in range(nd):   # input index p * s + k - lo, for p on axis d and k on axis nd + 2 + d
            i = torch.arange(grid[d])[:, None] * strides[d] + torch.arange(kernel_size[d]) - pads[d][0]
            shape = [1] * (2 * nd + 2)
            shape[d], shape[nd + 2 + d] = grid[d], kernel_size[d]
            self.inputs.append(i.view(shape))
            self.valid = self.valid & ((i >= 0) & (i < size[d])).view(shape)
        self.positions = [self._axis(grid[d], d) for d in range(nd)]
        self.f, self.c = self._axis(filters, nd), self._axis(in_channels, nd + 1)

    def _axis(self, n: int, at: int) -> Tensor:
        shape = [1] * len(self.full)
        shape[at] = n
        return torch.arange(n).view(shape)


def _ravel(parts, dims) -> Tensor:
    """Row-major flat index of broadcast index tensors ``parts`` in an array of shape ``dims``."""
    flat = torch.zeros((), dtype=torch.long)
    for part, n in zip(parts, dims):
        flat = flat * n + part
    return flat


def _keras_kernel(kernel: Tensor, implementation: int, last: bool, g: _Geometry, name: str) -> Tensor:
    """The Keras kernel in the public layout ``(*P, F, C, *k)``, zeros where Keras has no weight."""
    nd, grid, filters, channels, size = len(g.grid), g.grid, g.filters, g.in_channels, g.size
    kernel_size = g.full[nd + 2:]
    what = f"an implementation-{implementation} kernel"
    note = f" (input size {size}, {channels} input channels)"
    if implementation == 1:       # (prod(P), prod(k) * C, F); rows (*k, C) or (C, *k)
        _check_shape(kernel, (math.prod(grid), math.prod(kernel_size) * channels, filters), what, name, note)
        if last:
            w = kernel.reshape(*grid, *kernel_size, channels, filters)
            return w.permute(*range(nd), 2 * nd + 1, 2 * nd, *range(nd, 2 * nd))
        w = kernel.reshape(*grid, channels, *kernel_size, filters)
        return w.permute(*range(nd), 2 * nd + 1, *range(nd, 2 * nd + 1))
    if implementation == 2:       # dense (*I, C, *P, F) or (C, *I, F, *P), read where connected
        expected = (*size, channels, *grid, filters) if last else (channels, *size, filters, *grid)
        _check_shape(kernel, expected, what, name, note)
        inputs = [i.clamp(0, n - 1) for i, n in zip(g.inputs, size)]
        at = (*inputs, g.c, *g.positions, g.f) if last else (g.c, *inputs, g.f, *g.positions)
        return kernel[at] * g.valid
    # implementation 3: the connected entries, sorted by (flat output index, flat input index)
    mask = g.valid.expand(g.full)
    _check_shape(kernel, (int(mask.sum()),), what, name, note)
    if last:
        out_index = _ravel((*g.positions, g.f), (*grid, filters))
        in_index = _ravel((*g.inputs, g.c), (*size, channels))
    else:
        out_index = _ravel((g.f, *g.positions), (filters, *grid))
        in_index = _ravel((g.c, *g.inputs), (channels, *size))
    key = (out_index * (math.prod(size) * channels) + in_index).expand(g.full)[mask]
    rank = torch.empty_like(key)
    rank[key.argsort()] = torch.arange(key.numel())
    w = kernel.new_zeros(g.full)
    w[mask] = kernel[rank]
    return w


def _keras_in_channels(kernel: Tensor, implementation: int, last: bool, grid, kernel_size, strides,
                       pads, size, filters, name: str) -> int:
    """The input channels that the kernel's shape implies (the config need not say)."""
    nd, taps = len(grid), math.prod(kernel_size)
    if implementation == 1:
        if kernel.dim() != 3 or kernel.shape[1] % taps or kernel.shape[::2] != (math.prod(grid), filters):
            raise ValueError(f"{name}: expected an implementation-1 kernel of shape ({math.prod(grid)}, "
                             f"{taps} * in_channels, {filters}) for input size {size}, "
                             f"got {tuple(kernel.shape)}")
        return kernel.shape[1] // taps
    if implementation == 2:
        if kernel.dim() != 2 * nd + 2:
            raise ValueError(f"{name}: expected a {2 * nd + 2}-d implementation-2 kernel, got shape "
                             f"{tuple(kernel.shape)}")
        return kernel.shape[nd if last else 0]
    connections = int(_Geometry(grid, kernel_size, strides, pads, size, filters, 1).valid.sum()) * filters
    if kernel.dim() != 1 or kernel.numel() % connections:
        raise ValueError(f"{name}: expected an implementation-3 kernel of shape "
                         f"({connections} * in_channels,) for input size {size}, got {tuple(kernel.shape)}")
    return kernel.numel() // connections


def from_keras(layer_or_config, weights=None, *, input_size=None, dtype=None) -> nn.Module:
    """The PyTorch layer computing what a Keras ``LocallyConnected1D/2D`` computes.

    Args:
        layer_or_config: a built ``tf_keras.layers.LocallyConnected1D/2D`` layer; or its
            ``get_config()`` dict; or its serialized form ``{"class_name": ..., "config": ...,
            "build_config": ...}`` (as in ``model.to_json()``). Any ``implementation`` (1, 2, 3),
            ``data_format`` and ``padding`` (``"same"`` exists for implementations 2 and 3).
        weights: ``layer.get_weights()``: ``[kernel, bias]`` (``[kernel]`` without bias) as numpy
            arrays, or ``{"kernel": ..., "bias": ...}``. Taken from the layer when not given.
            Kernel shapes, ``P`` the output grid, ``I`` the input size, ``k`` the kernel, ``C`` and
            ``F`` the input and output channels:

            - implementation 1: ``(prod(P), prod(k) * C, F)``, rows in row-major grid order, the
              middle axis flattened as ``(*k, C)`` for channels_last, ``(C, *k)`` for channels_first;
            - implementation 2: ``(*I, C, *P, F)`` channels_last, ``(C, *I, F, *P)`` channels_first,
              a dense kernel of which only the connected entries count;
            - implementation 3: ``(nnz,)``, the connected entries in the sorted order of Keras's
              ``kernel_idxs`` (pairs of flat output and input indices in ``data_format`` order);
            - bias: ``(*P, F)``. With channels_first Keras adds it as ``bias.reshape(F, *P)`` (a
              reshape, not a transpose), and so does the converted layer.
        input_size: the spatial input size (``L`` or ``(H, W)``), needed when the config has no
            ``batch_input_shape`` / build input shape and the kernel (implementation 1 or 3)
            does not fix it.
        dtype: of the returned parameters; default the kernel's dtype.

    Returns:
        ``LocallyConnected1d/2d`` for **channels-first** input; ``nn.Sequential(pad=..., local=...,
        activation=...)`` when the layer has an activation (relu, relu6, leaky_relu, tanh,
        sigmoid, softmax, log_softmax, elu, selu, softplus, softsign, swish/silu, gelu, mish) or
        pads unevenly (``"same"`` with an even kernel). Feed channels_last Keras input ``x``
        (``(N, H, W, C)`` or ``(N, L, C)``) as ``x.movedim(-1, 1)`` and move the output back with
        ``y.movedim(1, -1)``; channels_first input goes in as it is. Positions that ``"same"``
        padding leaves out get zero weights.

    Raises:
        TypeError: not a LocallyConnected1D/2D layer or config, or a config without weights.
        ValueError: wrong class name, weights of the wrong number or shapes, an unknown
            implementation, padding or activation, or no input size.

    Example::

        local = unshared.interop.from_keras(keras_layer)     # or from_keras(config, weights)
        y = local(torch.from_numpy(x_nhwc).movedim(-1, 1)).movedim(1, -1)   # == keras_layer(x_nhwc)
    """
    config, weights, batch_shape = _keras_parse(layer_or_config, weights)
    if "kernel_size" not in config or "filters" not in config:
        raise ValueError(f"from_keras: not a LocallyConnected config (no 'kernel_size'/'filters'): "
                         f"keys {sorted(config)}")
    kernel_size = _ints(config["kernel_size"], len(config["kernel_size"])
                        if isinstance(config["kernel_size"], Sequence) else 1, "kernel_size")
    nd = len(kernel_size)
    if nd not in (1, 2):
        raise ValueError(f"from_keras: kernel_size={config['kernel_size']!r} is neither 1d nor 2d")
    name = f"from_keras(LocallyConnected{nd}D {config.get('name', '')!r})"
    filters = int(config["filters"])
    strides = _ints(config.get("strides", 1), nd, "strides")
    padding = str(config.get("padding", "valid")).lower()
    data_format = config.get("data_format") or "channels_last"
    implementation = config.get("implementation", 1)
    use_bias = bool(config.get("use_bias", True))
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"{name}: unknown data_format={data_format!r}")
    if implementation not in (1, 2, 3):
        raise ValueError(f"{name}: unknown implementation={implementation!r} (expected 1, 2 or 3)")
    if padding not in ("valid", "same") or (padding == "same" and implementation == 1):
        raise ValueError(f"{name}: unsupported padding={padding!r} with implementation={implementation} "
                         f"(Keras has 'valid' for all, 'same' for implementations 2 and 3)")
    activation = _keras_activation(config.get("activation"), data_format)
    last = data_format == "channels_last"

    if isinstance(weights, Mapping):
        weights = [weights[k] for k in ("kernel", "bias") if weights.get(k) is not None]
    weights = list(weights)
    if len(weights) != 1 + use_bias:
        names = "[kernel, bias]" if use_bias else "[kernel]"
        raise ValueError(f"{name}: expected {1 + use_bias} weight arrays ({names} for use_bias={use_bias}), "
                         f"got {len(weights)}")
    kernel = _as_tensor(weights[0], "kernel")
    bias = _as_tensor(weights[1], "bias") if use_bias else None

    # the input size, from whichever of the keyword, the config and an implementation-2 kernel say it
    sizes, in_channels = [], None
    if input_size is not None:
        sizes.append(("input_size", _ints(input_size, nd, "input_size")))
    if batch_shape is not None and len(batch_shape) == nd + 2:
        spatial = batch_shape[1:-1] if last else batch_shape[2:]
        in_channels = batch_shape[-1] if last else batch_shape[1]
        if all(s is not None for s in spatial):
            sizes.append(("the config's input shape", tuple(int(s) for s in spatial)))
    if implementation == 2 and kernel.dim() == 2 * nd + 2:
        sizes.append(("the kernel", tuple(kernel.shape[:nd] if last else kernel.shape[1:nd + 1])))
    if not sizes:
        raise ValueError(f"{name}: the input size is unknown (the config has no batch_input_shape or build "
                         f"input shape); pass input_size=, e.g. input_size={(8,) * nd if nd > 1 else 8}")
    for what, size in sizes[1:]:
        if size != sizes[0][1]:
            raise ValueError(f"{name}: {sizes[0][0]} says input size {sizes[0][1]} but {what} says {size}")
    size = sizes[0][1]
    if padding == "valid":
        grid, pads = tuple((i - k) // s + 1 for i, k, s in zip(size, kernel_size, strides)), ((0, 0),) * nd
    else:   # Keras: ceil(i / s) outputs, k // 2 taps before the first input
        grid = tuple(-(-i // s) for i, s in zip(size, strides))
        pads = tuple((k // 2, max(0, (o - 1) * s + k - i - k // 2))
                     for i, k, s, o in zip(size, kernel_size, strides, grid))
    if any(o <= 0 for o in grid):
        raise ValueError(f"{name}: input size {size} is smaller than kernel_size={kernel_size}")
    if in_channels is None:
        in_channels = _keras_in_channels(kernel, implementation, last, grid, kernel_size, strides, pads, size,
                                         filters, name)
    geometry = _Geometry(grid, kernel_size, strides, pads, size, filters, int(in_channels))
    w = _keras_kernel(kernel, implementation, last, geometry, name).contiguous()
    if bias is not None:
        _check_shape(bias, (*grid, filters), "bias", name)
        bias = bias.movedim(-1, 0) if last else bias.reshape(filters, *grid)   # Keras's own reading
    return _build(w, bias, stride=strides, pads=pads, dilation=(1,) * nd, input_size=size, dtype=dtype,
                  activation=activation, source=name)


# ------------------------------------------------------------------------------------------------
# JAX / Flax
# ------------------------------------------------------------------------------------------------
def _lax_pads(padding, input_size, kernel, stride, dilation, source: str, *, flax: bool):
    """``((lo, hi), ...)`` and the padding mode for a lax/Flax ``padding`` argument."""
    nd = len(kernel)
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    if isinstance(padding, str):
        mode = padding.upper()
        if mode in ("SAME", "SAME_LOWER"):
            pads = []
            for i, s, sp in zip(input_size, stride, span):
                total = max((-(-i // s) - 1) * s + sp - i, 0)
                lo = total // 2 if mode == "SAME" else total - total // 2
                pads.append((lo, total - lo))
            return tuple(pads), "zeros"
        if mode == "VALID":
            return ((0, 0),) * nd, "zeros"
        if flax and mode in ("CIRCULAR", "REFLECT"):
            return tuple(((sp - 1) // 2, sp // 2) for sp in span), mode.lower()
        if flax and mode == "CAUSAL":
            if nd != 1:
                raise ValueError(f"{source}: padding='CAUSAL' is 1d only, got a {nd}d kernel")
            return ((span[0] - 1, 0),), "zeros"
        raise ValueError(f"{source}: unknown padding={padding!r}")
    if isinstance(padding, int) and not isinstance(padding, bool):
        return ((padding, padding),) * nd, "zeros"
    try:
        items = list(padding)
    except TypeError:
        raise TypeError(f"{source}: padding must be a string, an int or a sequence, got {padding!r}") from None
    if len(items) == 1 and nd > 1:
        items = items * nd
    if len(items) != nd:
        raise ValueError(f"{source}: padding={padding!r} must have one entry per spatial dimension ({nd})")
    pads = []
    for p in items:
        if isinstance(p, int) and not isinstance(p, bool):
            pads.append((p, p))
        elif isinstance(p, Sequence) and len(p) == 2:
            pads.append((int(p[0]), int(p[1])))
        else:
            raise ValueError(f"{source}: padding entry {p!r} is neither an int nor a (low, high) pair")
    return tuple(pads), "zeros"


def _infer_input_size(input_size, grid, kernel, stride, dilation, padding, source, *, flax):
    """``input_size`` as given, or the only one that gives ``grid`` (stride 1 everywhere)."""
    nd = len(kernel)
    if input_size is not None:
        return _ints(input_size, nd, "input_size")
    if any(s != 1 for s in stride):
        raise ValueError(f"{source}: input_size is required with strides={tuple(stride)} (several input "
                         f"sizes give the output grid {tuple(grid)})")
    if isinstance(padding, str) and padding.upper() != "VALID":
        return tuple(grid)                          # SAME/CIRCULAR/REFLECT/CAUSAL keep the size
    # VALID or explicit pads: i = o + span - 1 - lo - hi (pads do not depend on the size here)
    pads, _ = _lax_pads(padding, grid, kernel, stride, dilation, source, flax=flax)
    return tuple(o + d * (k - 1) - lo - hi for o, k, d, (lo, hi) in zip(grid, kernel, dilation, pads))


def _params(kernel, bias, source):
    """Split a Flax params / variables mapping into (kernel, bias)."""
    if isinstance(kernel, Mapping):
        params = kernel.get("params", kernel)
        if "kernel" not in params:
            raise ValueError(f"{source}: expected a params dict with 'kernel' (and 'bias'), "
                             f"got keys {sorted(params)}")
        if bias is not None:
            raise TypeError(f"{source}: pass the bias inside the params dict or as bias=, not both")
        return params["kernel"], params.get("bias")
    return kernel, bias


def from_flax(kernel, bias=None, *, kernel_size=None, input_size=None, strides=1, padding="SAME",
              kernel_dilation=1, input_dilation=1, feature_group_count=1, mask=None, module=None,
              dtype=None) -> nn.Module:
    """The PyTorch layer computing what ``flax.linen.ConvLocal`` computes with these parameters.

    Args:
        kernel: the ``ConvLocal`` kernel ``(*output_size, in_channels * prod(kernel_size), features)``,
            its middle axis flattened as ``(in_channels, *kernel_size)`` (channel-major); or the
            params dict ``{"kernel": ..., "bias": ...}``, or the variables ``{"params": {...}}``.
        bias: ``(*output_size, features)``, or None (``use_bias=False``).
        kernel_size, strides, padding, kernel_dilation, input_dilation, feature_group_count, mask:
            the module's attributes, with Flax's defaults (``padding="SAME"``); ``padding`` may be
            ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``, ``"CAUSAL"`` (1d), an int, or
            ``(low, high)`` pairs. ``mask`` multiplies the kernel, as Flax does.
        module: a ``flax.linen.ConvLocal`` to read those attributes from instead.
        input_size: spatial input size (``(H, W)``); required when a stride is not 1.
        dtype: of the returned parameters; default the kernel's dtype.

    Returns:
        ``LocallyConnected1d/2d/3d`` for **channels-first** input (``nn.Sequential(pad=...,
        local=...)`` when the padding is uneven): feed Flax's channels-last ``x`` ``(N, H, W, C)``
        as ``x.movedim(-1, 1)``, and ``y.movedim(1, -1)`` gives Flax's ``(N, OH, OW, features)``.

    Example::

        flax_layer = flax.linen.ConvLocal(4, (3, 3), padding="VALID")
        variables = flax_layer.init(key, x)                  # x: (N, H, W, C)
        local = unshared.interop.from_flax(variables, module=flax_layer)   # or kernel_size=(3, 3), ...
        y = local(torch.from_numpy(np.array(x)).movedim(-1, 1)).movedim(1, -1)   # == flax_layer.apply(...)
    """
    source = "from_flax"
    kernel, bias = _params(kernel, bias, source)
    if module is not None:
        if kernel_size is not None:
            raise TypeError(f"{source}: give either module= or kernel_size= and the other attributes, not both")
        if not hasattr(module, "kernel_size") or getattr(module, "shared_weights", False):
            raise TypeError(f"{source}: module must be a flax.linen.ConvLocal, got {type(module).__name__}")
        kernel_size, strides, padding = module.kernel_size, module.strides, module.padding
        kernel_dilation, input_dilation = module.kernel_dilation, module.input_dilation
        feature_group_count, mask = module.feature_group_count, module.mask
    if kernel_size is None:
        raise TypeError(f"{source}: kernel_size= is required (the kernel's shape cannot tell it)")
    kernel = _as_tensor(kernel, "kernel")
    kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
    nd = len(kernel_size)
    if nd not in (1, 2, 3):
        raise ValueError(f"{source}: kernel_size={kernel_size} must have 1, 2 or 3 dimensions")
    strides = _ints(1 if strides is None else strides, nd, "strides")
    dilation = _ints(1 if kernel_dilation is None else kernel_dilation, nd, "kernel_dilation")
    if _ints(1 if input_dilation is None else input_dilation, nd, "input_dilation") != (1,) * nd:
        raise ValueError(f"{source}: input_dilation={input_dilation!r} is not supported (only 1)")
    if feature_group_count != 1:
        raise ValueError(f"{source}: feature_group_count={feature_group_count!r} is not supported by ConvLocal")
    taps = math.prod(kernel_size)
    if kernel.dim() != nd + 2 or kernel.shape[-2] % taps:
        raise ValueError(f"{source}: expected a kernel of shape (*output_size, in_channels * {taps}, features) "
                         f"for kernel_size={kernel_size}, got {tuple(kernel.shape)}")
    if mask is not None:
        mask = _as_tensor(mask, "mask")
        _check_shape(mask, tuple(kernel.shape), "mask", source)
        kernel = kernel * mask.to(kernel.dtype)
    grid, features, in_channels = tuple(kernel.shape[:nd]), kernel.shape[-1], kernel.shape[-2] // taps
    size = _infer_input_size(input_size, grid, kernel_size, strides, dilation, padding, source, flax=True)
    pads, mode = _lax_pads(padding, size, kernel_size, strides, dilation, source, flax=True)
    w = kernel.reshape(*grid, in_channels, *kernel_size, features)
    w = w.permute(*range(nd), 2 * nd + 1, *range(nd, 2 * nd + 1)).contiguous()
    if bias is not None:
        bias = _as_tensor(bias, "bias")
        _check_shape(bias, (*grid, features), "bias", source)
        bias = bias.movedim(-1, 0)
    return _build(w, bias, stride=strides, pads=pads, dilation=dilation, input_size=size, padding_mode=mode,
                  dtype=dtype, source=source)


def _rhs_spec(dimension_numbers, nd: int, source: str) -> str:
    """The rhs spec string (``"OIHW"`` by default); spatial letters must keep one order in all specs."""
    if dimension_numbers is None:
        return "OI" + "DHW"[3 - nd:]
    if (not isinstance(dimension_numbers, Sequence) or len(dimension_numbers) != 3
            or not all(isinstance(s, str) for s in dimension_numbers)):
        raise TypeError(f"{source}: dimension_numbers must be None or a 3-tuple of strings such as "
                        f"('NCHW', 'OIHW', 'NCHW'), got {dimension_numbers!r}")
    lhs, rhs, out = dimension_numbers
    orders = [[c for c in spec if c not in skip] for spec, skip in ((lhs, "NC"), (rhs, "OI"), (out, "NC"))]
    if any(len(s) != nd + 2 for s in dimension_numbers) or orders[0] != orders[1] or orders[0] != orders[2]:
        raise ValueError(f"{source}: dimension_numbers={dimension_numbers!r}: expected {nd} spatial "
                         f"letters in the same order in lhs, rhs and output specs")
    return rhs


def from_lax(rhs, bias=None, *, filter_shape, input_size=None, window_strides=None, padding="VALID",
             rhs_dilation=None, lhs_dilation=None, dimension_numbers=None, dtype=None) -> nn.Module:
    """The PyTorch layer computing ``jax.lax.conv_general_dilated_local(lhs, rhs, ...)`` (+ ``bias``).

    Args:
        rhs: the kernel; with the default ``dimension_numbers`` (``('NCHW', 'OIHW', 'NCHW')``) its
            shape is ``(out_channels, in_channels * prod(filter_shape), *output_size)``, the ``I``
            axis flattened as ``(in_channels, *filter_shape)``. Other specs (spatial letters in the
            same order in all three, e.g. ``('NHWC', 'HWIO', 'NHWC')``) are read by their letters.
        bias: optional, ``(out_channels, *output_size)``, added after the convolution.
        filter_shape, window_strides, padding (``"SAME"``, ``"SAME_LOWER"``, ``"VALID"`` or
            ``(low, high)`` pairs), rhs_dilation, lhs_dilation (only 1): as for the lax function.
        input_size: spatial size of ``lhs``; required when a stride is not 1.
        dtype: of the returned parameters; default ``rhs``'s dtype.

    Returns:
        ``LocallyConnected1d/2d/3d`` for ``(N, C, *spatial)`` input: the default ``lhs`` as it is;
        for other specs, ``lhs`` permuted to ``N, C`` then its spatial axes (``x.movedim(-1, 1)``
        for ``NHWC``), the output in the same layout.
    """
    source = "from_lax"
    filter_shape = tuple(int(k) for k in filter_shape)
    nd = len(filter_shape)
    if nd not in (1, 2, 3):
        raise ValueError(f"{source}: filter_shape={filter_shape} must have 1, 2 or 3 dimensions")
    rhs_spec = _rhs_spec(dimension_numbers, nd, source)
    rhs = _as_tensor(rhs, "rhs")
    strides = _ints(1 if window_strides is None else window_strides, nd, "window_strides")
    dilation = _ints(1 if rhs_dilation is None else rhs_dilation, nd, "rhs_dilation")
    if _ints(1 if lhs_dilation is None else lhs_dilation, nd, "lhs_dilation") != (1,) * nd:
        raise ValueError(f"{source}: lhs_dilation={lhs_dilation!r} is not supported (only 1)")
    taps = math.prod(filter_shape)
    if rhs.dim() != nd + 2 or rhs.shape[rhs_spec.index("I")] % taps:
        raise ValueError(f"{source}: expected rhs of {nd + 2} dimensions ({rhs_spec}) with I = in_channels * "
                         f"{taps} for filter_shape={filter_shape}, got shape {tuple(rhs.shape)}")
    spatial = [a for a, c in enumerate(rhs_spec) if c not in "OI"]
    rhs = rhs.permute(*spatial, rhs_spec.index("O"), rhs_spec.index("I"))      # (*P, O, C * prod(k))
    grid, out_channels = tuple(rhs.shape[:nd]), rhs.shape[nd]
    in_channels = rhs.shape[nd + 1] // taps
    size = _infer_input_size(input_size, grid, filter_shape, strides, dilation, padding, source, flax=False)
    pads, mode = _lax_pads(padding, size, filter_shape, strides, dilation, source, flax=False)
    w = rhs.reshape(*grid, out_channels, in_channels, *filter_shape).contiguous()
    if bias is not None:
        bias = _as_tensor(bias, "bias")
        _check_shape(bias, (out_channels, *grid), "bias", source)
    return _build(w, bias, stride=strides, pads=pads, dilation=dilation, input_size=size, padding_mode=mode,
                  dtype=dtype, source=source)
