"""Import tf-keras ``LocallyConnected1D/2D`` layers: :func:`from_keras`.

Reads a live layer (by duck typing: ``get_config``/``get_weights``), its ``get_config()`` dict or
its serialized form, for any ``implementation`` (1, 2, 3) and ``data_format``. Nothing here imports
TensorFlow or Keras, and numpy only when handed arrays.

Notation: ``P`` the output grid, ``I`` the input size, ``k`` the kernel size, ``C`` and ``F`` the
input and output channels; the public weight is ``(*P, F, C, *k)``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import Tensor, nn

from .. import _utils as U
from .common import as_tensor, build_layer, check_shape, int_tuple, kernel_tuple, output_grid

__all__ = ["from_keras"]

_CLASSES = {"LocallyConnected1D": 1, "LocallyConnected2D": 2}
_ACTIVATIONS = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU, "selu": nn.SELU,
    "softplus": nn.Softplus, "softsign": nn.Softsign, "swish": nn.SiLU, "silu": nn.SiLU,
    "gelu": nn.GELU, "mish": nn.Mish, "relu6": nn.ReLU6,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),    # tf.nn.leaky_relu's default slope
}


def _activation(name, data_format: str) -> nn.Module | None:
    """The module for a Keras activation name (or its serialized form); None for linear."""
    if isinstance(name, Mapping):                  # serialized form {"class_name": ..., "config": "relu"}
        inner = name.get("config")
        name = inner if isinstance(inner, str) else inner.get("name") if isinstance(inner, Mapping) else name
    if name is None or name == "linear":
        return None
    # softmax, log_softmax: Keras takes the last axis, the channels only for channels_last
    if name in ("softmax", "log_softmax"):
        dim = 1 if data_format == "channels_last" else -1
        return nn.Softmax(dim) if name == "softmax" else nn.LogSoftmax(dim)
    if name not in _ACTIVATIONS:
        raise ValueError(f"from_keras: unsupported activation {name!r}; supported: "
                         f"{sorted(['linear', 'softmax', 'log_softmax', *_ACTIVATIONS])} (convert the layer "
                         f"with activation='linear' and apply yours after it)")
    return _ACTIVATIONS[name]()


def _input_shape(layer_or_config, config: Mapping):
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


def _parse(layer_or_config, weights):
    """(config, weights list, input shape or None) from any accepted form of the Keras layer."""
    if isinstance(layer_or_config, Mapping):
        outer = layer_or_config
        if "config" in outer and isinstance(outer["config"], Mapping):
            class_name = outer.get("class_name")
            config = outer["config"]
        else:
            class_name, config = outer.get("class_name"), outer
        if class_name is not None and class_name not in _CLASSES:
            raise ValueError(f"from_keras: expected a LocallyConnected1D or LocallyConnected2D config, "
                             f"got class_name={class_name!r}")
        if weights is None:
            raise TypeError("from_keras: a config dict needs its weights: pass weights=layer.get_weights() "
                            "([kernel, bias] or [kernel])")
        return dict(config), weights, _input_shape(outer, config)
    if not (hasattr(layer_or_config, "get_config") and hasattr(layer_or_config, "get_weights")):
        raise TypeError(f"from_keras expects a tf_keras LocallyConnected1D/2D layer or its get_config() "
                        f"dict, got {type(layer_or_config).__name__}")
    class_name = type(layer_or_config).__name__
    if class_name not in _CLASSES:
        raise TypeError(f"from_keras expects a LocallyConnected1D or LocallyConnected2D layer, "
                        f"got {class_name}")
    config = dict(layer_or_config.get_config())
    if weights is None:
        weights = layer_or_config.get_weights()
        if not weights:
            raise ValueError(f"from_keras: layer {config.get('name')!r} has no weights yet (not built); "
                             f"call it on an input first, or pass weights=")
    return config, weights, _input_shape(layer_or_config, config)


class _WeightIndex:
    """For every entry of the public weight ``(*P, F, C, *k)`` of a Keras layer (no dilation, no
    groups), index tensors that broadcast to that shape:

    - ``inputs[d]``: the input index it reads on spatial axis ``d``, ``p * s + k - lo``;
    - ``valid``: whether every ``inputs[d]`` lies inside the input (Keras has no weight elsewhere);
    - ``positions[d]``, ``filters``, ``channels``: its output position on axis ``d``, its filter and
      its input channel.
    """

    def __init__(self, geometry: U.Geometry):
        g, nd = geometry, geometry.ndim
        self.geometry = g
        self.shape = (*g.output_size, g.out_channels, g.in_channels, *g.kernel_size)
        self.inputs, self.valid = [], torch.ones((), dtype=torch.bool)
        for d, (o, k, s, (lo, _), i) in enumerate(zip(g.output_size, g.kernel_size, g.stride, g.padding,
                                                       g.input_size)):
            index = torch.arange(o)[:, None] * s + torch.arange(k) - lo
            shape = [1] * (2 * nd + 2)
            shape[d], shape[nd + 2 + d] = o, k
            self.inputs.append(index.view(shape))
            self.valid = self.valid & ((index >= 0) & (index < i)).view(shape)
        self.positions = [self._axis(o, d) for d, o in enumerate(g.output_size)]
        self.filters, self.channels = self._axis(g.out_channels, nd), self._axis(g.in_channels, nd + 1)

    def _axis(self, n: int, at: int) -> Tensor:
        shape = [1] * len(self.shape)
        shape[at] = n
        return torch.arange(n).view(shape)


def _ravel(parts, dims) -> Tensor:
    """Row-major flat index of broadcast index tensors ``parts`` in an array of shape ``dims``."""
    flat = torch.zeros((), dtype=torch.long)
    for part, n in zip(parts, dims):
        flat = flat * n + part
    return flat


def _public_kernel(kernel: Tensor, implementation: int, last: bool, index: _WeightIndex, name: str) -> Tensor:
    """The Keras kernel in the public layout ``(*P, F, C, *k)``, zeros where Keras has no weight."""
    g = index.geometry
    nd, grid, filters, channels, size, kernel_size = (g.ndim, g.output_size, g.out_channels, g.in_channels,
                                                      g.input_size, g.kernel_size)
    what = f"an implementation-{implementation} kernel"
    note = f" (input size {size}, {channels} input channels)"
    if implementation == 1:       # (prod(P), prod(k) * C, F); rows (*k, C) or (C, *k)
        check_shape(kernel, (math.prod(grid), math.prod(kernel_size) * channels, filters), what, name, note)
        if last:
            w = kernel.reshape(*grid, *kernel_size, channels, filters)
            return w.permute(*range(nd), 2 * nd + 1, 2 * nd, *range(nd, 2 * nd))
        w = kernel.reshape(*grid, channels, *kernel_size, filters)
        return w.permute(*range(nd), 2 * nd + 1, *range(nd, 2 * nd + 1))
    if implementation == 2:       # dense (*I, C, *P, F) or (C, *I, F, *P), read where connected
        expected = (*size, channels, *grid, filters) if last else (channels, *size, filters, *grid)
        check_shape(kernel, expected, what, name, note)
        inputs = [i.clamp(0, n - 1) for i, n in zip(index.inputs, size)]
        at = ((*inputs, index.channels, *index.positions, index.filters) if last
              else (index.channels, *inputs, index.filters, *index.positions))
        return kernel[at] * index.valid
    # implementation 3: the connected entries, sorted by (flat output index, flat input index)
    mask = index.valid.expand(index.shape)
    check_shape(kernel, (int(mask.sum()),), what, name, note)
    if last:
        out_index = _ravel((*index.positions, index.filters), (*grid, filters))
        in_index = _ravel((*index.inputs, index.channels), (*size, channels))
    else:
        out_index = _ravel((index.filters, *index.positions), (filters, *grid))
        in_index = _ravel((index.channels, *index.inputs), (channels, *size))
    key = (out_index * (math.prod(size) * channels) + in_index).expand(index.shape)[mask]
    rank = torch.empty_like(key)
    rank[key.argsort()] = torch.arange(key.numel())
    w = kernel.new_zeros(index.shape)
    w[mask] = kernel[rank]
    return w


def _in_channels(kernel: Tensor, implementation: int, last: bool, geometry: U.Geometry, name: str) -> int:
    """The input channels that the kernel's shape implies (the config need not say); ``geometry``'s
    own ``in_channels`` is not read."""
    nd, size, filters = geometry.ndim, geometry.input_size, geometry.out_channels
    taps, positions = geometry.kernel_volume, geometry.positions
    if implementation == 1:
        if kernel.dim() != 3 or kernel.shape[1] % taps or kernel.shape[::2] != (positions, filters):
            raise ValueError(f"{name}: expected an implementation-1 kernel of shape ({positions}, "
                             f"{taps} * in_channels, {filters}) for input size {size}, "
                             f"got {tuple(kernel.shape)}")
        return kernel.shape[1] // taps
    if implementation == 2:
        if kernel.dim() != 2 * nd + 2:
            raise ValueError(f"{name}: expected a {2 * nd + 2}-d implementation-2 kernel, got shape "
                             f"{tuple(kernel.shape)}")
        return kernel.shape[nd if last else 0]
    connections = int(_WeightIndex(replace(geometry, in_channels=1)).valid.sum()) * filters
    if kernel.dim() != 1 or kernel.numel() % connections:
        raise ValueError(f"{name}: expected an implementation-3 kernel of shape "
                         f"({connections} * in_channels,) for input size {size}, got {tuple(kernel.shape)}")
    return kernel.numel() // connections


def _input_size(input_size, batch_shape, kernel: Tensor, implementation: int, last: bool, nd: int, name: str):
    """(spatial input size, input channels or None) from whichever of the ``input_size`` keyword,
    the config's input shape and an implementation-2 kernel say it; they must agree."""
    sizes, in_channels = [], None
    if input_size is not None:
        sizes.append(("input_size", int_tuple(input_size, nd, "input_size")))
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
    return U.positive(sizes[0][1], "input_size"), in_channels


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

    Example: ``local = from_keras(keras_layer)`` (or ``from_keras(config, weights)``), then
    ``local(torch.from_numpy(x_nhwc).movedim(-1, 1)).movedim(1, -1)`` equals ``keras_layer(x_nhwc)``.
    Without TensorFlow, a channels_last ``LocallyConnected1D`` of implementation 1 (6 positions of
    3 taps x 2 channels, 4 filters) and what Keras computes with it::

        >>> import numpy as np, torch, unshared
        >>> config = {"filters": 4, "kernel_size": (3,), "implementation": 1}
        >>> kernel, bias = np.random.rand(6, 3 * 2, 4), np.random.rand(6, 4)
        >>> local = unshared.interop.from_keras(config, [kernel, bias], input_size=8)
        >>> local
        LocallyConnected1d(2, 4, kernel_size=(3,), stride=(1,), input_size=(8,))
        >>> x = np.random.rand(5, 8, 2)                                      # Keras's (N, L, C)
        >>> keras_y = np.stack([x[:, p:p + 3].reshape(5, 6) @ kernel[p] + bias[p] for p in range(6)], 1)
        >>> np.allclose(local(torch.from_numpy(x).movedim(-1, 1)).movedim(1, -1).detach().numpy(), keras_y)
        True
    """
    config, weights, batch_shape = _parse(layer_or_config, weights)
    if "kernel_size" not in config or "filters" not in config:
        raise ValueError(f"from_keras: not a LocallyConnected config (no 'kernel_size'/'filters'): "
                         f"keys {sorted(config)}")
    kernel_size = kernel_tuple(config["kernel_size"], "kernel_size")
    nd = len(kernel_size)
    if nd not in (1, 2):
        raise ValueError(f"from_keras: kernel_size={config['kernel_size']!r} is neither 1d nor 2d")
    name = f"from_keras(LocallyConnected{nd}D {config.get('name', '')!r})"
    filters = int(config["filters"])
    strides = U.positive(int_tuple(config.get("strides", 1), nd, "strides"), "strides")
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
    activation = _activation(config.get("activation"), data_format)
    last = data_format == "channels_last"

    if isinstance(weights, Mapping):
        weights = [weights[k] for k in ("kernel", "bias") if weights.get(k) is not None]
    weights = list(weights)
    if len(weights) != 1 + use_bias:
        names = "[kernel, bias]" if use_bias else "[kernel]"
        raise ValueError(f"{name}: expected {1 + use_bias} weight arrays ({names} for use_bias={use_bias}), "
                         f"got {len(weights)}")
    kernel = as_tensor(weights[0], "kernel")
    bias = as_tensor(weights[1], "bias") if use_bias else None

    size, in_channels = _input_size(input_size, batch_shape, kernel, implementation, last, nd, name)
    if padding == "valid":
        pads = ((0, 0),) * nd
        grid = output_grid(size, kernel_size, strides, pads, (1,) * nd, name)
    else:   # Keras: ceil(i / s) outputs, k // 2 taps before the first input
        grid = tuple(-(-i // s) for i, s in zip(size, strides))
        pads = tuple((k // 2, max(0, (o - 1) * s + k - i - k // 2))
                     for i, k, s, o in zip(size, kernel_size, strides, grid))
    geometry = U.Geometry(size, grid, kernel_size, strides, pads, (1,) * nd, groups=1,
                          in_channels=0 if in_channels is None else int(in_channels), out_channels=filters)
    if in_channels is None:
        geometry = replace(geometry, in_channels=_in_channels(kernel, implementation, last, geometry, name))
    w = _public_kernel(kernel, implementation, last, _WeightIndex(geometry), name).contiguous()
    if bias is not None:
        check_shape(bias, (*grid, filters), "bias", name)
        bias = bias.movedim(-1, 0) if last else bias.reshape(filters, *grid)   # Keras's own reading
    return build_layer(w, bias, stride=strides, pads=pads, dilation=(1,) * nd, input_size=size, dtype=dtype,
                       activation=activation, source=name)
