"""The one-shot plan: each operation as one patch gather and one batched matmul.

What the ``unfold`` + batched-matmul recipes compute, in the fewest operator launches (host time is
what a small layer pays, above all on a GPU), for every option of the layer:

- ``forward``: every patch of the zero-padded input gathered in one strided copy,
  ``(positions * groups, N, R)``, then one ``torch.bmm`` with the filters ``(positions * groups,
  out_per_group, R)``;
- ``input_grad``: one ``torch.bmm`` gives every patch's gradient, and one ``index_add_`` adds them
  into the padded input's gradient;
- ``weight_grad``: the same gather and one ``torch.bmm`` (and one ``index_add_`` into shared banks).

``R = kernel_volume * in_channels / groups``, kernel-major. The price is transient memory
proportional to the kernel volume (what :mod:`.pytorch` bounds by blocks): :func:`can_run` refuses
a call whose temporaries (:func:`transient_bytes`) exceed ``settings().one_shot_bytes``.
Half-precision inputs are computed in float32, as in :mod:`.pytorch`.
"""
from __future__ import annotations

import math

import torch

from .._utils import Geometry, cached_index, empty_weight, flat_bank_index, memory_format_of
from .patches import compute_dtype, kernel_major_view, padded_input, position_major, weight_matrix, window_view
from .settings import current_settings

__all__ = ["can_run", "forward", "input_grad", "weight_grad", "transient_bytes"]

#: computed inside the custom operator (not made of standard differentiable operators)
STANDARD_OPERATORS = False


def transient_bytes(n: int, g: Geometry, dtype: torch.dtype) -> int:
    """Bytes of the largest operation's temporaries at batch ``n``: the patches (or their
    gradients), the padded input (or its gradient), the output (or the position-major output
    gradient) and the filters of every position, in the compute dtype."""
    cg = g.in_channels // g.groups
    elements = (n * g.positions * g.in_channels * g.kernel_volume + n * g.in_channels * math.prod(g.padded_size)
                + n * g.positions * g.out_channels + g.positions * g.out_channels * cg * g.kernel_volume)
    return elements * compute_dtype(dtype).itemsize


def can_run(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> str | None:
    """``None`` when the call's temporaries fit ``settings().one_shot_bytes``, else the reason.
    ``x``: the input or the output gradient (its batch size and dtype count)."""
    need, limit = transient_bytes(x.shape[0], g, x.dtype), current_settings().one_shot_bytes
    if need > limit:
        return (f"the one-shot plan needs {need} bytes of temporaries at batch {x.shape[0]}, more than "
                f"settings(one_shot_bytes={limit}) allows")
    return None


def _patches(x: torch.Tensor, g: Geometry, dtype: torch.dtype) -> torch.Tensor:
    """Every patch of ``x`` as ``(positions * groups, N, R)`` in ``dtype``: one copy."""
    view = window_view(padded_input(x, g), g, 0, g.output_size[0])
    patches = torch.empty(view.shape, dtype=dtype, device=x.device).copy_(view)
    return patches.view(g.positions * g.groups, x.shape[0], g.kernel_volume * (g.in_channels // g.groups))


def _filters(w: torch.Tensor, g: Geometry, dtype: torch.dtype) -> torch.Tensor:
    """The filters of every position, kernel-major, as ``(positions * groups, out_per_group, R)``
    in ``dtype``: a view of a kernel-major weight, else one copy (shared banks, channel-major)."""
    ws, kernel_major = weight_matrix(w, g)
    banks = flat_bank_index(g, w.device)
    if banks is not None:
        ws = torch.index_select(ws.view(ws.shape[0], -1), 0, banks).view(-1, *ws.shape[1:])
    if not kernel_major:
        reordered = torch.empty(ws.shape, dtype=dtype, device=w.device)
        kernel_major_view(reordered, g, True).copy_(kernel_major_view(ws, g, False))
        ws = reordered
    return ws.reshape(-1, *ws.shape[-2:]).to(dtype)


def _build_scatter_index(g: Geometry, device) -> torch.Tensor:
    nd = g.ndim
    flat = torch.zeros((), dtype=torch.int64, device="cpu")  # explicit: a default-device context may be set
    step = 1
    for d in reversed(range(nd)):  # row-major over the padded input
        along = [1] * (2 * nd)
        along[d] = g.output_size[d]
        outputs = torch.arange(g.output_size[d], dtype=torch.int64, device="cpu").view(along) * g.stride[d]
        along[d], along[nd + d] = 1, g.kernel_size[d]
        offsets = torch.arange(g.kernel_size[d], dtype=torch.int64, device="cpu").view(along) * g.dilation[d]
        flat = flat + (outputs + offsets) * step
        step *= g.padded_size[d]
    return flat.flatten().to(device)


def _scatter_index(g: Geometry, device) -> torch.Tensor:
    """``(positions * kernel_volume,)`` int64: the flat padded-input position that each output
    position (row-major) reads at each kernel offset (row-major); built once per geometry and device."""
    return cached_index(("one-shot scatter", g, torch.device(device)), _build_scatter_index)


def _position_major_grads(gy: torch.Tensor, g: Geometry, dtype: torch.dtype) -> torch.Tensor:
    """``(N, O, *output_size)`` -> ``(positions * groups, out_per_group, N)`` in ``dtype``: one copy."""
    return position_major(gy, g, dtype, batch_last=True).view(g.positions * g.groups, g.out_channels // g.groups,
                                                               gy.shape[0])


# ----------------------------------------------------------------------------- the three operations

def forward(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> torch.Tensor:
    """``(N, C, *input_size)``, public weight -> ``(N, O, *output_size)`` in ``x``'s memory format."""
    n, cdt = x.shape[0], compute_dtype(x.dtype)
    products = torch.bmm(_patches(x, g, cdt), _filters(w, g, cdt).transpose(1, 2))  # (P * G, N, Og)
    y = products.view(*g.output_size, g.groups, n, g.out_channels // g.groups)
    y = y.movedim(-2, 0).movedim(-2, 1).movedim(-1, 2)  # (N, G, Og, *output_size)
    result = torch.empty((n, g.out_channels, *g.output_size), dtype=x.dtype, device=x.device,
                         memory_format=memory_format_of(x))
    result.unflatten(1, (g.groups, g.out_channels // g.groups)).copy_(y)
    return result


def input_grad(gy: torch.Tensor, w: torch.Tensor, g: Geometry,
               memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Adjoint in the input: ``(N, O, *output_size)`` -> ``(N, C, *input_size)``."""
    n, cdt = gy.shape[0], compute_dtype(gy.dtype)
    cg = g.in_channels // g.groups
    grads = _position_major_grads(gy, g, cdt)
    patch_grads = torch.bmm(_filters(w, g, cdt).transpose(1, 2), grads)  # (P * G, R, N): (P, G, K, Cg, N)
    rows = patch_grads.view(g.positions, g.groups, g.kernel_volume, cg * n).transpose(1, 2)
    padded = torch.zeros((math.prod(g.padded_size), g.in_channels * n), dtype=cdt, device=gy.device)
    padded.index_add_(0, _scatter_index(g, gy.device), rows.reshape(g.positions * g.kernel_volume, g.in_channels * n))
    interior = tuple(slice(lo, lo + i) for (lo, _), i in zip(g.padding, g.input_size))
    gx = torch.empty((n, g.in_channels, *g.input_size), dtype=gy.dtype, device=gy.device,
                     memory_format=memory_format)
    return gx.copy_(padded.view(*g.padded_size, g.in_channels, n)[interior].movedim(-1, 0).movedim(-1, 1))


def weight_grad(x: torch.Tensor, gy: torch.Tensor, g: Geometry, kernel_major: bool = True) -> torch.Tensor:
    """Adjoint in the weight: ``x``, ``(N, O, *output_size)`` -> public-shaped weight gradient,
    kernel-major or channel-major as asked (the weight's layout)."""
    n, cdt = x.shape[0], compute_dtype(x.dtype)
    public_shape = (*g.weight_leading, g.out_channels, g.in_channels // g.groups, *g.kernel_size)
    gw = empty_weight(public_shape, g.ndim, kernel_major=kernel_major, dtype=x.dtype, device=x.device)
    memory, _ = weight_matrix(gw, g)  # (Pw, G, Og, R), a view of gw
    grads = _position_major_grads(gy, g, cdt)
    patches = _patches(x, g, cdt)
    banks = flat_bank_index(g, x.device)
    if banks is None and kernel_major and cdt == x.dtype:
        torch.bmm(grads, patches, out=memory.view(-1, *memory.shape[-2:]))
        return gw
    sums = torch.bmm(grads, patches).view(g.positions, *memory.shape[1:])  # kernel-major
    if banks is not None:  # each bank sums its positions (in the compute dtype)
        sums = torch.zeros(memory.shape, dtype=cdt, device=x.device).index_add_(0, banks, sums)
    kernel_major_view(memory, g, kernel_major).copy_(kernel_major_view(sums, g, True))
    return gw
