"""Pure-PyTorch locally connected layers: block implicit GEMM on strided views.

The output grid is processed in blocks of rows (of its first dimension). For each block the input
patches are gathered from one strided view of the channels-last, zero-padded input into a bounded
buffer ``(positions * groups, batch, kernel_volume * channels_per_group)``, and one batched matmul
per block multiplies them with the block's filters. The full patch tensor (``F.unfold``) is never
built: transient memory is bounded by the block budget (:mod:`unshared.backends.blocks`: cache-sized on a
CPU, large on a GPU) whatever the layer size.

The three bilinear operations of the layer are computed here; :mod:`unshared.backends.ops`
makes them one differentiable operator (each one's derivatives are the other two):

- ``forward(x, w)``: the layer, ``y[n, o, p] = sum_{c, k} w[p, o, c, k] x_pad[n, c, p*s + k*d]``;
- ``input_grad(gy, w)``: its adjoint in ``x`` (gradient w.r.t. the input);
- ``weight_grad(x, gy)``: its adjoint in ``w`` (gradient w.r.t. the weight).

With weight sharing (``geometry.banks``) each block of positions gathers its filters from the
banks, and the weight gradient adds each block into the banks.
Non-zero padding modes are applied by the caller (``F.pad``); here padding means zeros.
Half-precision inputs are gathered into float32 buffers: products and sums happen in float32.
"""
from __future__ import annotations

import itertools
import math

import torch

from .._utils import Geometry, empty_weight, flat_bank_index, memory_format_of
from .blocks import block_plan, budget
from .buffers import empty_buffer
from .patches import compute_dtype, kernel_major_view, padded_input, position_major, weight_matrix, window_view
from .settings import current_settings

#: computed inside the custom operator (not made of standard differentiable operators)
STANDARD_OPERATORS = False


class _WeightBlocks:
    """The filters of a range of positions, kernel-major, as ``(positions * groups, out_per_group,
    R)`` (what the patches are multiplied with): slices of a kernel-major weight, or, for shared
    banks and/or a channel-major weight, pieces of at most ``piece`` positions gathered and/or
    reordered into one reused buffer (cache-sized: copying a large block out of cache costs more
    than the matmul that reads it)."""

    def __init__(self, ws: torch.Tensor, g: Geometry, kernel_major: bool, banks: torch.Tensor | None,
                 piece: int):
        self.ws, self.g, self.kernel_major, self.banks, self.piece = ws, g, kernel_major, banks, piece
        self.selected = self.reordered = None
        self.last = None  # (q0, q1, copy): the batch slices of one block reuse its copy
        if banks is not None:
            self.selected = empty_buffer((piece, ws[0].numel()), dtype=ws.dtype, device=ws.device)
        if not kernel_major:
            self.reordered = empty_buffer((piece, *ws.shape[1:]), dtype=ws.dtype, device=ws.device)

    def pieces(self, p0: int, p1: int, dtype):
        """Yield ``(q0, q1, filters of positions q0:q1)`` covering ``p0:p1``."""
        if self.banks is None and self.kernel_major:
            yield p0, p1, self.ws[p0:p1].reshape(-1, *self.ws.shape[-2:]).to(dtype)
            return
        for q0 in range(p0, p1, self.piece):
            q1 = min(q0 + self.piece, p1)
            yield q0, q1, self._copy(q0, q1).reshape(-1, *self.ws.shape[-2:]).to(dtype)

    def _copy(self, q0: int, q1: int) -> torch.Tensor:
        if self.last is not None and self.last[:2] == (q0, q1):
            return self.last[2]
        if self.banks is None:
            block = self.ws[q0:q1]
        else:  # index_select on the 2-d view: 12x faster than on the 4-d tensor (measured)
            block = torch.index_select(self.ws.view(self.ws.shape[0], -1), 0, self.banks[q0:q1],
                                       out=self.selected[: q1 - q0]).view(-1, *self.ws.shape[1:])
        if not self.kernel_major:
            target = self.reordered[: q1 - q0]
            kernel_major_view(target, self.g, True).copy_(kernel_major_view(block, self.g, False))
            block = target
        self.last = (q0, q1, block)
        return block


def _gather(xp, g, r0, r1, buf):
    """Copy the patches of rows ``r0:r1`` of ``xp`` into ``buf`` as ``(positions*groups, N, R)``,
    ``R`` kernel-major."""
    view = window_view(xp, g, r0, r1)
    block = buf[: view.numel()].view(view.shape)
    block.copy_(view)
    return block.view(-1, xp.shape[0], g.kernel_volume * (g.in_channels // g.groups))


def _plan(g: Geometry, n: int, device: torch.device, input_grad: bool = False):
    """The blocks of this call, and the elements of the largest block's patch buffer."""
    plan = block_plan(g, n, budget(device.type, current_settings(), input_grad))
    row_elements = math.prod(g.output_size[1:]) * g.in_channels * g.kernel_volume
    return plan, max((b.row1 - b.row0) * (b.batch1 - b.batch0) for b in plan) * row_elements


def _weight_blocks(ws: torch.Tensor, g: Geometry, kernel_major: bool, forward_plan) -> _WeightBlocks:
    """The filters by blocks, in pieces of at most the positions of one forward block (cache-sized)."""
    piece = max(b.position1 - b.position0 for b in forward_plan)
    return _WeightBlocks(ws, g, kernel_major, flat_bank_index(g, ws.device), piece)


def can_run(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> str | None:
    """``None`` when this backend can compute the call, else the reason why not."""
    return None  # any device and floating dtype that torch.bmm supports


# ----------------------------------------------------------------------------- the three operations

def forward(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> torch.Tensor:
    """``(N, C, *input_size)``, public weight -> ``(N, O, *output_size)``."""
    n = x.shape[0]
    cdt = compute_dtype(x.dtype)
    og = g.out_channels // g.groups
    if n == 0:
        return torch.empty((0, g.out_channels, *g.output_size), dtype=x.dtype, device=x.device,
                           memory_format=memory_format_of(x))
    ws, kernel_major = weight_matrix(w, g)
    xp = padded_input(x, g)
    out = empty_buffer((g.positions, g.groups, n, og), dtype=cdt, device=x.device)
    plan, buf_elements = _plan(g, n, x.device)
    buf = empty_buffer((buf_elements,), dtype=cdt, device=x.device)
    weight_blocks = _weight_blocks(ws, g, kernel_major, plan)
    for r0, r1, p0, p1, n0, n1 in plan:
        patches = _gather(xp[n0:n1], g, r0, r1, buf)
        ((_, _, wc),) = weight_blocks.pieces(p0, p1, cdt)  # blocks are at most one piece
        if n1 - n0 == n:
            torch.bmm(patches, wc.transpose(1, 2), out=out[p0:p1].view(-1, n, og))
        else:
            out[p0:p1, :, n0:n1] = torch.bmm(patches, wc.transpose(1, 2)).view(p1 - p0, g.groups, -1, og)
    y = out.view(*g.output_size, g.groups, n, og)
    y = y.movedim(-2, 0).movedim(-2, 1).movedim(-1, 2).reshape(n, g.out_channels, *g.output_size)
    result = torch.empty(y.shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    return result.copy_(y)


def input_grad(gy: torch.Tensor, w: torch.Tensor, g: Geometry,
               memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Adjoint in the input: ``(N, O, *output_size)`` -> ``(N, C, *input_size)``.

    Per block, one bmm gives every patch's gradient, then each kernel offset adds its slice into a
    padded gradient buffer. Two orientations, chosen by batch size (``batch_inner_from`` in
    :mod:`unshared.backends.settings`; measured at DeepFace L4):
    small batches multiply ``(N, O) @ (O, R)`` and add into a ``(*padded, N, C)`` buffer (batch 8:
    52 ms against 115 ms); large batches multiply ``(R, O) @ (O, N)`` and add into
    ``(*padded, C, N)``, where both sides of every addition are contiguous ``C * N`` runs
    (batch 64: 236 ms against 302 ms).
    """
    n = gy.shape[0]
    cdt = compute_dtype(gy.dtype)
    og, cg = g.out_channels // g.groups, g.in_channels // g.groups
    if n == 0:
        return torch.empty((0, g.in_channels, *g.input_size), dtype=gy.dtype, device=gy.device,
                           memory_format=memory_format)
    batch_inner = n >= current_settings().batch_inner_from
    ws, kernel_major = weight_matrix(w, g)
    r = ws.shape[-1]
    gyp = position_major(gy, g, cdt, batch_last=batch_inner)  # (P, G, Og, N) or (P, G, N, Og)
    if batch_inner:
        gxp = empty_buffer((*g.padded_size, g.in_channels, n), dtype=cdt, device=gy.device, zero=True)
        gxp_nc = gxp.movedim(-1, 0).movedim(-1, 1)
    else:
        gxp = empty_buffer((*g.padded_size, n, g.in_channels), dtype=cdt, device=gy.device, zero=True)
        gxp_nc = gxp.movedim(-2, 0).movedim(-1, 1)
    plan, buf_elements = _plan(g, n, gy.device, input_grad=True)
    buf = empty_buffer((buf_elements,), dtype=cdt, device=gy.device)
    weight_blocks = _weight_blocks(ws, g, kernel_major, _plan(g, n, gy.device)[0])
    for r0, r1, p0, p1, n0, n1 in plan:
        nb = n1 - n0
        block = (r1 - r0, *g.output_size[1:], g.groups)
        grads = gyp[p0:p1, :, :, n0:n1].reshape(-1, og, nb) if batch_inner else \
            gyp[p0:p1, :, n0:n1].reshape(-1, nb, og)
        gp = buf[: grads.numel() // og * r].view(-1, *((r, nb) if batch_inner else (nb, r)))
        for q0, q1, wc in weight_blocks.pieces(p0, p1, cdt):
            rows = slice((q0 - p0) * g.groups, (q1 - p0) * g.groups)
            if batch_inner:
                torch.bmm(wc.transpose(1, 2), grads[rows], out=gp[rows])
            else:
                torch.bmm(grads[rows], wc, out=gp[rows])
        gp = gp.view(*block, *g.kernel_size, cg, nb) if batch_inner else gp.view(*block, nb, *g.kernel_size, cg)
        lead = (slice(None),) * (len(block) + (0 if batch_inner else 1))
        for offset in itertools.product(*map(range, g.kernel_size)):
            source = gp[lead + offset]
            target = window_view(gxp_nc[n0:n1], g, r0, r1, offset)  # (*block, nb, Cg)
            target.add_(source.transpose(-1, -2) if batch_inner else source)
    interior = (slice(None), slice(None)) + tuple(
        slice(lo, lo + i) for (lo, _), i in zip(g.padding, g.input_size))
    gx = torch.empty((n, g.in_channels, *g.input_size), dtype=gy.dtype, device=gy.device,
                     memory_format=memory_format)
    return gx.copy_(gxp_nc[interior])


def weight_grad(x: torch.Tensor, gy: torch.Tensor, g: Geometry, kernel_major: bool = True) -> torch.Tensor:
    """Adjoint in the weight: ``x``, ``(N, O, *output_size)`` -> public-shaped weight gradient,
    laid out kernel-major or channel-major (as the weight it is the gradient of).

    Per block: ``(O, N) @ (N, R)`` per position, summed over batch slices; with shared banks each
    block's position gradients are then added into their banks.
    """
    n = x.shape[0]
    cdt = compute_dtype(x.dtype)
    og, cg = g.out_channels // g.groups, g.in_channels // g.groups
    public_shape = (*g.weight_leading, g.out_channels, cg, *g.kernel_size)
    gw = empty_weight(public_shape, g.ndim, kernel_major=kernel_major, dtype=x.dtype, device=x.device,
                      allocate=empty_buffer)
    banks = flat_bank_index(g, x.device)
    if n == 0 or banks is not None:
        gw.zero_()
    if n == 0:
        return gw
    gws, kernel_major = weight_matrix(gw, g)  # a view
    gyp = position_major(gy, g, cdt)
    xp = padded_input(x, g)
    plan, buf_elements = _plan(g, n, x.device)
    buf = empty_buffer((buf_elements,), dtype=cdt, device=x.device)
    # the patches are kernel-major: write (and accumulate) straight into a kernel-major result
    direct = cdt == gw.dtype and banks is None and kernel_major
    # shared banks sum many positions: in float32 for half precision, cast once at the end
    bank_sums = gws if banks is None or cdt == gw.dtype else torch.zeros(gws.shape, dtype=cdt, device=x.device)
    for r0, r1, p0, p1, n0, n1 in plan:
        patches = _gather(xp[n0:n1], g, r0, r1, buf)
        grads = gyp[p0:p1, :, n0:n1].reshape(-1, n1 - n0, og).transpose(1, 2)
        if direct:
            target = gws[p0:p1].view(-1, og, gws.shape[-1])
            if n0 == 0:
                torch.bmm(grads, patches, out=target)
            else:
                target.baddbmm_(grads, patches)
            continue
        # half precision, shared banks or channel-major: sum this block's batch slices (in float32
        # for half precision) first, then convert the layout and/or add into the banks
        acc = torch.bmm(grads, patches) if n0 == 0 else acc.baddbmm_(grads, patches)
        if n1 == n:
            source = kernel_major_view(acc.view(p1 - p0, *gws.shape[1:]), g, True)
            if banks is None:
                kernel_major_view(gws[p0:p1], g, kernel_major).copy_(source)
            else:
                kernel_major_view(bank_sums, g, kernel_major).index_add_(0, banks[p0:p1], source)
    if bank_sums is not gws:
        gws.copy_(bank_sums)
    return gw
