"""Triton kernels of the locally connected layer: forward, input gradient, weight gradient, each in
two families chosen by the constexpr ``SMALL`` (the launcher picks one per shape and, on a GPU,
by measuring; :mod:`.configs` lists the candidates). Imported only by the launcher when it
computes (this module imports Triton); the helpers both families use are in :mod:`.common`. One
kernel serves 1d, 2d and 3d: the launcher pads sizes to three spatial dimensions with unit sizes
and zero strides, and passes any strides (it chooses the layouts).

**Tensor cores** (``SMALL`` false). Each program computes a tile of ``BLOCK_P`` consecutive
(flat) positions for a block of samples (the batch is the matrix product's long M dimension) and
a block of channels: a batched product ``(BLOCK_P, BLOCK_N, BLOCK_R) @ (BLOCK_P, BLOCK_R, BLOCK_O)``
per reduction step, one matrix per position, since every position has its own filters.
Neighbouring positions read overlapping input windows: those gathers go through the L1 cache
(``.ca``), so a window is fetched from L2 about once per program instead of once per position.
``BLOCK_P == 1`` is a plain 2-d product (wgmma on sm_90); ``BLOCK_P > 1`` a batched one (mma.sync).

**Channel-poor** (``SMALL`` true: 1-8 channels on the product's narrow side, as in genomics in 1d
or the first layer of an image network). CUDA-core FMAs, with no tensor-core tile padded to 16
channels: each program keeps a ``(BLOCK_N, BLOCK_P, channels)`` block of sums in registers and
walks the reduction one element at a time (``BLOCK_R`` of the forward and the input gradient and
``BLOCK_N`` of the weight gradient are then unused): per step one ``(BLOCK_N, BLOCK_P)`` slab of
the input (or output gradient), contiguous along the positions for a unit stride, and one
``(BLOCK_P, channels)`` slab of filters. The branch not taken is not compiled.

Both families gather patches on the fly through the strides (zero padding by masking: no padded
or unfolded copy exists) and sum in float32 (float64 for float64). Program ids and block indices
are int32 unless ``BLOCKS64`` (a count past 2^31; ptxas makes a 64-bit division a subroutine
call), base offsets int64, per-element offsets int32 unless ``INDEX64``. The programs lie on a 2-d
grid, which lifts the 2^31 - 1 limit of a 1-d one.

Layouts (``P``: output positions, ``R = prod(kernel) * Cg``): ``x``/``grad_input`` ``(N, C, ID, IH, IW)``
and ``y``/``grad_output`` ``(N, O, OD, OH, OW)``, any strides; weight ``(banks or P, O, R)``
contiguous, ``R`` ordered ``(kernel offset, input channel)`` when ``KERNEL_MAJOR``, else
``(input channel, kernel offset)``; banks ``(P,)`` int64 (read only when ``HAS_BANKS``).
"""
import triton
import triton.language as tl

from .common import (at_position, bank_of, bank_offset, filter_row, first_offsets, mma, patch_offsets, reach,
                     store_output, store_weight_grad, tile, unit_strides, weight_channel, wide)


@triton.jit
def forward_kernel(
    x_ptr, w_ptr, bank_ptr, y_ptr,
    N, Cg, Og, G, R, P,
    ID, IH, IW, OH, OW, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sxn, sxc, sxd, sxh, sxw,
    syn, syc, syd, syh, syw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, INDEX64: tl.constexpr, BLOCKS64: tl.constexpr, SX_UNIT: tl.constexpr, SY_UNIT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr, SMALL: tl.constexpr,
):
    """``y[n, o, p] = sum_r w[bank(p), o, r] * patch(x)[n, p, r]``; programs: batch blocks x
    (group, output-channel blocks) x position tiles, batch fastest."""
    sxn, sxc, sxd, sxh, sxw = unit_strides(sxn, sxc, sxd, sxh, sxw, SX_UNIT)
    syn, syc, syd, syh, syw = unit_strides(syn, syc, syd, syh, syw, SY_UNIT)
    n, n_ok, g, o, o_ok, p, p_ok, pd, ph, pw, valid = tile(N, Og, G, P, OH, OW, BLOCK_N, BLOCK_O, BLOCK_P, BLOCKS64)
    if not valid:
        return
    w_base = bank_offset(bank_of(bank_ptr, p, p_ok, HAS_BANKS), G, Og, R)
    if SMALL:  # one reduction element per step, sums (BLOCK_N, BLOCK_P, BLOCK_O)
        x_rows = x_ptr + wide(n, INDEX64)[:, None] * sxn
        w_at = w_ptr + w_base[:, None] + wide(o, INDEX64)[None, :] * R
        w_ok = p_ok[:, None] & o_ok[None, :]
        acc = tl.zeros((BLOCK_N, BLOCK_P, BLOCK_O), dtype=ACC)
        for r in range(0, R):
            offsets, inside = patch_offsets(r, R, Cg, KH, KW, pd, ph, pw, p_ok, SD, SH, SW, PD, PH, PW, DD, DH, DW,
                                            ID, IH, IW, sxc, sxd, sxh, sxw, g * Cg, KERNEL_MAJOR, INDEX64)
            xv = tl.load(x_rows + offsets[None, :], mask=n_ok[:, None] & inside[None, :], other=0.0,
                         cache_modifier=".ca")
            wv = tl.load(w_at + r, mask=w_ok, other=0.0)
            acc += xv.to(ACC)[:, :, None] * wv.to(ACC)[None, :, :]
        store_output(acc, y_ptr, at_position(pd, ph, pw, syd, syh, syw)[None, :, None], p_ok[None, :, None],
                     n[:, None, None], n_ok[:, None, None], syn, o[None, None, :], o_ok[None, None, :], syc,
                     UPCAST, INDEX64)
    else:  # BLOCK_R reduction elements per step, sums (BLOCK_P, BLOCK_N, BLOCK_O)
        x_rows = x_ptr + wide(n, INDEX64)[None, :, None] * sxn
        w_cols = (w_ptr + w_base[:, None, None]) + wide(o, INDEX64)[None, None, :] * R
        w_ok = p_ok[:, None, None] & o_ok[None, None, :]
        acc = tl.zeros((BLOCK_P, BLOCK_N, BLOCK_O), dtype=ACC)
        for r0 in range(0, R, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            offsets, inside = patch_offsets(r[None, :], R, Cg, KH, KW, pd[:, None], ph[:, None], pw[:, None],
                                            p_ok[:, None], SD, SH, SW, PD, PH, PW, DD, DH, DW, ID, IH, IW, sxc, sxd,
                                            sxh, sxw, g * Cg, KERNEL_MAJOR, INDEX64)
            patches = tl.load(x_rows + offsets[:, None, :], mask=n_ok[None, :, None] & inside[:, None, :], other=0.0,
                              cache_modifier=".ca")
            filters = tl.load(w_cols + r[None, :, None], mask=w_ok & (r < R)[None, :, None], other=0.0)
            acc = mma(patches, filters, acc, BLOCK_P, UPCAST, PRECISION)
        store_output(acc, y_ptr, at_position(pd, ph, pw, syd, syh, syw)[:, None, None], p_ok[:, None, None],
                     n[None, :, None], n_ok[None, :, None], syn, o[None, None, :], o_ok[None, None, :], syc,
                     UPCAST, INDEX64)


@triton.jit
def input_grad_kernel(
    gy_ptr, w_ptr, bank_ptr, gx_ptr,
    N, Cg, Og, G, R, P,
    ID, IH, IW, OD, OH, OW, KD, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    STEP_D, STEP_H, STEP_W, JH, JW, J,
    sgn, sgc, sgd, sgh, sgw,
    sxn, sxc, sxd, sxh, sxw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, INDEX64: tl.constexpr, BLOCKS64: tl.constexpr, SG_UNIT: tl.constexpr, SX_UNIT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, SMALL: tl.constexpr,
):
    """``gx[n, c, i] = sum over (p, k) with p*s + k*d - pad = i of sum_o gy[n, o, p] * w[bank(p), o, k, c]``:
    a gather per input position (no atomics, one fixed order: deterministic). Its reduction runs
    over (reaching kernel offset j, output channel o), o fastest, flattened into ``J * Og`` and
    taken ``BLOCK_R`` at a time (no branch per offset, products of depth ``BLOCK_R``); only the
    offsets that can reach are enumerated (``J = prod(ceil(K_d / STEP_d))``), so a strided layer
    does not multiply zeros. Programs: batch blocks x (group, input-channel blocks) x
    input-position tiles (``P`` here counts input positions), batch fastest. The channel-poor
    family takes one ``(offset, output channel)`` per step."""
    sgn, sgc, sgd, sgh, sgw = unit_strides(sgn, sgc, sgd, sgh, sgw, SG_UNIT)
    sxn, sxc, sxd, sxh, sxw = unit_strides(sxn, sxc, sxd, sxh, sxw, SX_UNIT)
    n, n_ok, g, c, c_ok, i, i_ok, i_d, i_h, i_w, valid = tile(N, Cg, G, P, IH, IW, BLOCK_N, BLOCK_C, BLOCK_P, BLOCKS64)
    if not valid:
        return
    if SMALL:  # sums (BLOCK_N, BLOCK_P, BLOCK_C)
        kd0, kh0, kw0 = first_offsets(i_d, i_h, i_w, PD, PH, PW, SD, SH, SW, DD, DH, DW, STEP_D, STEP_H, STEP_W,
                                      KD, KH, KW)
        gy_rows = gy_ptr + wide(n, INDEX64)[:, None] * sgn
        w_c = weight_channel(c - g * Cg, KD * KH * KW, KERNEL_MAJOR, INDEX64)[None, :]
        acc = tl.zeros((BLOCK_N, BLOCK_P, BLOCK_C), dtype=ACC)
        for j in range(0, J):
            k, pd, ph, pw, reaches = reach(j, kd0, kh0, kw0, i_d, i_h, i_w, JH, JW, PD, PH, PW, SD, SH, SW, DD, DH, DW,
                                           STEP_D, STEP_H, STEP_W, KD, KH, KW, OD, OH, OW)
            reaches = reaches & i_ok
            gy_at = gy_rows + (wide(pd, INDEX64) * sgd + wide(ph, INDEX64) * sgh + wide(pw, INDEX64) * sgw)[None, :]
            w_row = filter_row(bank_ptr, pd, ph, pw, reaches, k, OH, OW, G, Og, R, Cg, HAS_BANKS, KERNEL_MAJOR)
            w_at = w_ptr + (w_row + wide(g * Og, INDEX64) * R)[:, None] + w_c
            gy_at += wide(g * Og, INDEX64) * sgc
            g_ok = n_ok[:, None] & reaches[None, :]
            f_ok = reaches[:, None] & c_ok[None, :]
            for _ in range(0, Og):  # one output channel per step: the pointers advance
                gv = tl.load(gy_at, mask=g_ok, other=0.0)
                wv = tl.load(w_at, mask=f_ok, other=0.0)
                acc += gv.to(ACC)[:, :, None] * wv.to(ACC)[None, :, :]
                gy_at += sgc
                w_at += R
        store_output(acc, gx_ptr, at_position(i_d, i_h, i_w, sxd, sxh, sxw)[None, :, None], i_ok[None, :, None],
                     n[:, None, None], n_ok[:, None, None], sxn, c[None, None, :], c_ok[None, None, :], sxc,
                     UPCAST, INDEX64)
    else:  # sums (BLOCK_P, BLOCK_N, BLOCK_C)
        kd0, kh0, kw0 = first_offsets(i_d[:, None], i_h[:, None], i_w[:, None], PD, PH, PW, SD, SH, SW, DD, DH, DW,
                                      STEP_D, STEP_H, STEP_W, KD, KH, KW)
        gy_rows = gy_ptr + wide(n, INDEX64)[None, :, None] * sgn
        w_c = weight_channel(c - g * Cg, KD * KH * KW, KERNEL_MAJOR, INDEX64)[None, None, :]
        acc = tl.zeros((BLOCK_P, BLOCK_N, BLOCK_C), dtype=ACC)
        for r0 in range(0, J * Og, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            o = g * Og + r % Og
            k, pd, ph, pw, reaches = reach((r // Og)[None, :], kd0, kh0, kw0, i_d[:, None], i_h[:, None],
                                           i_w[:, None], JH, JW, PD, PH, PW, SD, SH, SW, DD, DH, DW, STEP_D, STEP_H,
                                           STEP_W, KD, KH, KW, OD, OH, OW)
            reaches = reaches & (r < J * Og)[None, :] & i_ok[:, None]  # (BLOCK_P, BLOCK_R)
            gy_at = (wide(o, INDEX64)[None, :] * sgc + wide(pd, INDEX64) * sgd + wide(ph, INDEX64) * sgh
                     + wide(pw, INDEX64) * sgw)
            grads = tl.load(gy_rows + gy_at[:, None, :], mask=reaches[:, None, :] & n_ok[None, :, None], other=0.0)
            w_at = (filter_row(bank_ptr, pd, ph, pw, reaches, k, OH, OW, G, Og, R, Cg, HAS_BANKS, KERNEL_MAJOR)
                    + o.to(tl.int64)[None, :] * R)
            # (through L1: with a channel-major weight these are 1-element gathers whose sectors the
            # neighbouring input positions of the tile read too)
            filters = tl.load(w_ptr + w_at[:, :, None] + w_c, mask=reaches[:, :, None] & c_ok[None, None, :], other=0.0,
                              cache_modifier=".ca")
            acc = mma(grads, filters, acc, BLOCK_P, UPCAST, PRECISION)
        store_output(acc, gx_ptr, at_position(i_d, i_h, i_w, sxd, sxh, sxw)[:, None, None], i_ok[:, None, None],
                     n[None, :, None], n_ok[None, :, None], sxn, c[None, None, :], c_ok[None, None, :], sxc,
                     UPCAST, INDEX64)


@triton.jit
def weight_grad_kernel(
    x_ptr, gy_ptr, bank_ptr, gw_ptr,
    N, Cg, Og, G, R, P,
    ID, IH, IW, OH, OW, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sxn, sxc, sxd, sxh, sxw,
    sgn, sgc, sgd, sgh, sgw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, INDEX64: tl.constexpr, BLOCKS64: tl.constexpr, SX_UNIT: tl.constexpr, SG_UNIT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr, SMALL: tl.constexpr,
):
    """``gw[bank(p), o, r] (+)= sum_n gy[n, o, p] * patch(x)[n, p, r]``, computed transposed as
    ``(R, N) @ (N, O)`` tiles (the reduction tile is the product's M dimension). Without banks each
    program owns its output tile (plain store); with banks the positions of one bank add into it
    atomically (``gw`` is then a zeroed accumulator in ``ACC``). Programs: reduction blocks x
    (group, output-channel blocks) x position tiles. The channel-poor family takes one sample per
    step."""
    sxn, sxc, sxd, sxh, sxw = unit_strides(sxn, sxc, sxd, sxh, sxw, SX_UNIT)
    sgn, sgc, sgd, sgh, sgw = unit_strides(sgn, sgc, sgd, sgh, sgw, SG_UNIT)
    r, r_ok, g, o, o_ok, p, p_ok, pd, ph, pw, valid = tile(R, Og, G, P, OH, OW, BLOCK_R, BLOCK_O, BLOCK_P, BLOCKS64)
    if not valid:
        return
    offsets, inside = patch_offsets(r[None, :], R, Cg, KH, KW, pd[:, None], ph[:, None], pw[:, None], p_ok[:, None],
                                    SD, SH, SW, PD, PH, PW, DD, DH, DW, ID, IH, IW, sxc, sxd, sxh, sxw, g * Cg,
                                    KERNEL_MAJOR, INDEX64)
    acc = tl.zeros((BLOCK_P, BLOCK_R, BLOCK_O), dtype=ACC)
    if SMALL:
        gy_at = gy_ptr + at_position(pd, ph, pw, sgd, sgh, sgw)[:, None] + wide(o, INDEX64)[None, :] * sgc
        g_ok = p_ok[:, None] & o_ok[None, :]
        x_at = x_ptr + offsets
        for _ in range(0, N):  # the pointers advance (in 64 bits)
            xv = tl.load(x_at, mask=inside, other=0.0, cache_modifier=".ca")
            gv = tl.load(gy_at, mask=g_ok, other=0.0)
            acc += xv.to(ACC)[:, :, None] * gv.to(ACC)[:, None, :]
            x_at += sxn
            gy_at += sgn
    else:
        gy_cols = gy_ptr + at_position(pd, ph, pw, sgd, sgh, sgw)[:, None, None] + wide(o, INDEX64)[None, None, :] * sgc
        x_cols = x_ptr + offsets[:, :, None]
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_ok = n < N
            patches = tl.load(x_cols + wide(n, INDEX64)[None, None, :] * sxn,
                              mask=inside[:, :, None] & n_ok[None, None, :], other=0.0, cache_modifier=".ca")
            grads = tl.load(gy_cols + wide(n, INDEX64)[None, :, None] * sgn,
                            mask=p_ok[:, None, None] & n_ok[None, :, None] & o_ok[None, None, :], other=0.0)
            acc = mma(patches, grads, acc, BLOCK_P, UPCAST, PRECISION)
    store_weight_grad(acc, gw_ptr, bank_ptr, p, p_ok, r, r_ok, o, o_ok, G, Og, R, HAS_BANKS, UPCAST, INDEX64)
