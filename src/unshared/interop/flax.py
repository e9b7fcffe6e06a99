"""Import Flax ``ConvLocal`` parameters (:func:`from_flax`) and ``jax.lax.conv_general_dilated_local``
kernels (:func:`from_lax`).

Both kernels hold, per output position, rows flattened as ``(in_channels, *kernel_size)``
(channel-major); they differ in axis order and in the padding names they accept. Nothing here
imports JAX or Flax, and numpy only when handed arrays.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from .. import _utils as U
from .common import as_tensor, build_layer, check_shape, int_tuple, kernel_tuple

__all__ = ["from_flax", "from_lax"]


def _kernel_size(value, name: str, source: str) -> tuple[int, ...]:
    """A 1d, 2d or 3d kernel size as a tuple of positive ints."""
    kernel_size = kernel_tuple(value, name)
    if len(kernel_size) not in (1, 2, 3):
        raise ValueError(f"{source}: {name}={kernel_size} must have 1, 2 or 3 dimensions")
    return kernel_size


def _strides_and_dilation(nd: int, strides, dilation, input_dilation, names: tuple[str, str, str],
                          source: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(strides, kernel dilation) as positive ``nd``-tuples (None meaning 1); the input dilation must
    be 1. ``names``: what the three are called in the source framework."""
    stride_name, dilation_name, input_dilation_name = names
    strides = U.positive(int_tuple(1 if strides is None else strides, nd, stride_name), stride_name)
    dilation = U.positive(int_tuple(1 if dilation is None else dilation, nd, dilation_name), dilation_name)
    if int_tuple(1 if input_dilation is None else input_dilation, nd, input_dilation_name) != (1,) * nd:
        raise ValueError(f"{source}: {input_dilation_name}={input_dilation!r} is not supported (only 1)")
    return strides, dilation


def _pads(padding, input_size, kernel, stride, dilation, source: str, *, flax: bool):
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


def _input_size(input_size, grid, kernel, stride, dilation, padding, source, *, flax):
    """``input_size`` as given, or the only one that gives ``grid`` (stride 1 everywhere)."""
    nd = len(kernel)
    if input_size is not None:
        return U.positive(int_tuple(input_size, nd, "input_size"), "input_size")
    if any(s != 1 for s in stride):
        raise ValueError(f"{source}: input_size is required with strides={tuple(stride)} (several input "
                         f"sizes give the output grid {tuple(grid)})")
    if isinstance(padding, str) and padding.upper() != "VALID":
        return tuple(grid)                          # SAME/CIRCULAR/REFLECT/CAUSAL keep the size
    # VALID or explicit pads: i = o + span - 1 - lo - hi (pads do not depend on the size here)
    pads, _ = _pads(padding, grid, kernel, stride, dilation, source, flax=flax)
    return tuple(o + d * (k - 1) - lo - hi for o, k, d, (lo, hi) in zip(grid, kernel, dilation, pads))


def _layer(rows: Tensor, bias: Tensor | None, *, kernel_size, strides, dilation, input_size, padding,
           dtype, source: str, flax: bool) -> nn.Module:
    """The layer for ``rows`` ``(*P, O, C * prod(kernel_size))`` (the last axis flattened as
    ``(C, *kernel_size)``) and ``bias`` ``(O, *P)`` or None, padded as ``padding`` says."""
    nd = len(kernel_size)
    grid, out_channels = tuple(rows.shape[:nd]), rows.shape[nd]
    in_channels = rows.shape[nd + 1] // math.prod(kernel_size)
    size = _input_size(input_size, grid, kernel_size, strides, dilation, padding, source, flax=flax)
    pads, mode = _pads(padding, size, kernel_size, strides, dilation, source, flax=flax)
    w = rows.reshape(*grid, out_channels, in_channels, *kernel_size).contiguous()
    return build_layer(w, bias, stride=strides, pads=pads, dilation=dilation, input_size=size,
                       padding_mode=mode, dtype=dtype, source=source)


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

    Example: for ``flax_layer = flax.linen.ConvLocal(4, (3, 3), padding="VALID")`` and
    ``variables = flax_layer.init(key, x)``, ``local = from_flax(variables, module=flax_layer)``
    (or ``kernel_size=(3, 3), ...``); ``local(torch.from_numpy(np.array(x)).movedim(-1, 1)).movedim(1, -1)``
    equals ``flax_layer.apply(variables, x)``. Without JAX, a 1d kernel (6 positions, 2 channels x
    3 taps, 4 features) and what ``ConvLocal`` computes with it::

        >>> import numpy as np, torch, unshared
        >>> kernel = np.random.rand(6, 2 * 3, 4)
        >>> local = unshared.interop.from_flax(kernel, kernel_size=(3,), padding="VALID")
        >>> local
        LocallyConnected1d(2, 4, kernel_size=(3,), stride=(1,), bias=False, input_size=(8,))
        >>> x = np.random.rand(5, 8, 2)                                      # Flax's (N, L, C)
        >>> flax_y = np.stack([x[:, p:p + 3].transpose(0, 2, 1).reshape(5, 6) @ kernel[p] for p in range(6)], 1)
        >>> np.allclose(local(torch.from_numpy(x).movedim(-1, 1)).movedim(1, -1).detach().numpy(), flax_y)
        True
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
    kernel = as_tensor(kernel, "kernel")
    kernel_size = _kernel_size(kernel_size, "kernel_size", source)
    nd = len(kernel_size)
    strides, dilation = _strides_and_dilation(nd, strides, kernel_dilation, input_dilation,
                                              ("strides", "kernel_dilation", "input_dilation"), source)
    if feature_group_count != 1:
        raise ValueError(f"{source}: feature_group_count={feature_group_count!r} is not supported by ConvLocal")
    taps = math.prod(kernel_size)
    if kernel.dim() != nd + 2 or kernel.shape[-2] % taps:
        raise ValueError(f"{source}: expected a kernel of shape (*output_size, in_channels * {taps}, features) "
                         f"for kernel_size={kernel_size}, got {tuple(kernel.shape)}")
    if mask is not None:
        mask = as_tensor(mask, "mask")
        check_shape(mask, tuple(kernel.shape), "mask", source)
        kernel = kernel * mask.to(kernel.dtype)
    if bias is not None:
        bias = as_tensor(bias, "bias")
        check_shape(bias, (*kernel.shape[:nd], kernel.shape[-1]), "bias", source)
        bias = bias.movedim(-1, 0)
    return _layer(kernel.movedim(-1, nd), bias, kernel_size=kernel_size, strides=strides, dilation=dilation,
                  input_size=input_size, padding=padding, dtype=dtype, source=source, flax=True)


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
        filter_shape, window_strides, padding, rhs_dilation, lhs_dilation: as for the lax function;
            ``padding`` is ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"`` or ``(low, high)`` pairs, and
            ``lhs_dilation`` only 1.
        input_size: spatial size of ``lhs``; required when a stride is not 1.
        dtype: of the returned parameters; default ``rhs``'s dtype.

    Returns:
        ``LocallyConnected1d/2d/3d`` for ``(N, C, *spatial)`` input: the default ``lhs`` as it is;
        for other specs, ``lhs`` permuted to ``N, C`` then its spatial axes (``x.movedim(-1, 1)``
        for ``NHWC``), the output in the same layout.

    Example (without JAX: a 1d ``rhs`` of 4 filters, 2 channels x 3 taps, 6 positions, and what
    ``conv_general_dilated_local`` computes with it)::

        >>> import numpy as np, torch, unshared
        >>> rhs = np.random.rand(4, 2 * 3, 6)
        >>> local = unshared.interop.from_lax(rhs, filter_shape=(3,))
        >>> x = np.random.rand(5, 2, 8)                                      # lax's default (N, C, L)
        >>> lax_y = np.stack([x[:, :, p:p + 3].reshape(5, 6) @ rhs[:, :, p].T for p in range(6)], -1)
        >>> np.allclose(local(torch.from_numpy(x)).detach().numpy(), lax_y)
        True
    """
    source = "from_lax"
    filter_shape = _kernel_size(filter_shape, "filter_shape", source)
    nd = len(filter_shape)
    rhs_spec = _rhs_spec(dimension_numbers, nd, source)
    rhs = as_tensor(rhs, "rhs")
    strides, dilation = _strides_and_dilation(nd, window_strides, rhs_dilation, lhs_dilation,
                                              ("window_strides", "rhs_dilation", "lhs_dilation"), source)
    taps = math.prod(filter_shape)
    if rhs.dim() != nd + 2 or rhs.shape[rhs_spec.index("I")] % taps:
        raise ValueError(f"{source}: expected rhs of {nd + 2} dimensions ({rhs_spec}) with I = in_channels * "
                         f"{taps} for filter_shape={filter_shape}, got shape {tuple(rhs.shape)}")
    spatial = [a for a, c in enumerate(rhs_spec) if c not in "OI"]
    rhs = rhs.permute(*spatial, rhs_spec.index("O"), rhs_spec.index("I"))      # (*P, O, C * prod(k))
    if bias is not None:
        bias = as_tensor(bias, "bias")
        check_shape(bias, (rhs.shape[nd], *rhs.shape[:nd]), "bias", source)
    return _layer(rhs, bias, kernel_size=filter_shape, strides=strides, dilation=dilation, input_size=input_size,
                  padding=padding, dtype=dtype, source=source, flax=False)
