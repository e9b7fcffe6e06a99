"""Tensor-core Triton kernels of the locally connected layer: forward, input gradient, weight gradient.

Imported only by the launcher when it computes (this module imports Triton); the channel-poor
kernels (CUDA-core FMAs) are in :mod:`.small`, the helpers both use in :mod:`.common`. One kernel
family serves 1d, 2d and 3d: the launcher pads sizes to three spatial dimensions with unit sizes
and zero strides, and passes any strides (it chooses the layouts).

Each program computes a tile of ``BLOCK_P`` consecutive (flat) positions for a block of samples
(the batch is the matrix product's long M dimension) and a block of channels: a batched product
``(BLOCK_P, BLOCK_N, BLOCK_R) @ (BLOCK_P, BLOCK_R, BLOCK_O)`` per reduction step, one matrix per
position, since every position has its own filters. Neighbouring positions read overlapping input
windows: those gathers go through the L1 cache (``.ca``), so a window is fetched from L2 about
once per program instead of once per position. ``BLOCK_P == 1`` is a plain 2-d product (wgmma on
sm_90); ``BLOCK_P > 1`` a batched one (mma.sync). Patches are gathered on the fly through the
strides (zero padding by masking: no padded or unfolded copy exists) and summed in float32
(float64 for float64). Program ids and base offsets are int64; per-element offsets int32 unless
``INDEX64``. The programs lie on a 2-d grid, which lifts the 2^31 - 1 limit of a 1-d one.

Layouts (``P``: output positions, ``R = prod(kernel) * Cg``): ``x``/``grad_input`` ``(N, C, ID, IH, IW)``
and ``y``/``grad_output`` ``(N, O, OD, OH, OW)``, any strides; weight ``(banks or P, O, R)``
contiguous, ``R`` ordered ``(kernel offset, input channel)`` when ``KERNEL_MAJOR``, else
``(input channel, kernel offset)``; banks ``(P,)`` int64 (read only when ``HAS_BANKS``).
"""
import triton
import triton.language as tl

from .common import (bank_of, bank_offset, first_offset, mma, patch_offsets, position, program, reaching,
                     to_output, unit_strides, wide)


@triton.jit
def forward_kernel(
    x_ptr, w_ptr, bank_ptr, y_ptr,
    N, Cg, Og, G, R, P,
    ID, IH, IW, OH, OW, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sxn, sxc, sxd, sxh, sxw,
    syn, syc, syd, syh, syw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, INDEX64: tl.constexpr, SX_UNIT: tl.constexpr, SY_UNIT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """``y[n, o, p] = sum_r w[bank(p), o, r] * patch(x)[n, p, r]``; programs: batch blocks x
    (group, output-channel blocks) x position tiles, batch fastest."""
    sxn, sxc, sxd, sxh, sxw = unit_strides(sxn, sxc, sxd, sxh, sxw, SX_UNIT)
    syn, syc, syd, syh, syw = unit_strides(syn, syc, syd, syh, syw, SY_UNIT)
    bn, g, bo, t, valid = program(tl.cdiv(N, BLOCK_N), tl.cdiv(Og, BLOCK_O), G, tl.cdiv(P, BLOCK_P))
    if not valid:
        return
    p = t * BLOCK_P + tl.arange(0, BLOCK_P)  # int64
    p_ok = p < P
    pd, ph, pw = position(p, OH, OW)
    n = bn * BLOCK_N + tl.arange(0, BLOCK_N)
    o = g * Og + bo * BLOCK_O + tl.arange(0, BLOCK_O)
    n_ok = n < N
    o_ok = bo * BLOCK_O + tl.arange(0, BLOCK_O) < Og
    x_rows = x_ptr + wide(n, INDEX64)[None, :, None] * sxn
    w_base = bank_offset(bank_of(bank_ptr, p, p_ok, HAS_BANKS), G, Og, R)
    w_cols = (w_ptr + w_base[:, None, None]) + wide(o, INDEX64)[None, None, :] * R
    w_ok = p_ok[:, None, None] & o_ok[None, None, :]
    acc = tl.zeros((BLOCK_P, BLOCK_N, BLOCK_O), dtype=ACC)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        offsets, inside = patch_offsets(r[None, :], R, Cg, KH, KW, pd[:, None], ph[:, None], pw[:, None], SD, SH,
                                        SW, PD, PH, PW, DD, DH, DW, ID, IH, IW, sxc, sxd, sxh, sxw, g * Cg,
                                        KERNEL_MAJOR, INDEX64)
        inside = inside & p_ok[:, None]
        patches = tl.load(x_rows + offsets[:, None, :], mask=n_ok[None, :, None] & inside[:, None, :], other=0.0,
                          cache_modifier=".ca")
        filters = tl.load(w_cols + r[None, :, None], mask=w_ok & (r < R)[None, :, None], other=0.0)
        acc = mma(patches, filters, acc, BLOCK_P, UPCAST, PRECISION)
    y_at = y_ptr + (pd.to(tl.int64) * syd + ph.to(tl.int64) * syh + pw.to(tl.int64) * syw)[:, None, None]
    y_offsets = wide(n, INDEX64)[None, :, None] * syn + wide(o, INDEX64)[None, None, :] * syc
    tl.store(y_at + y_offsets, to_output(acc, y_ptr, UPCAST),
             mask=p_ok[:, None, None] & n_ok[None, :, None] & o_ok[None, None, :])


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
    ACC: tl.constexpr, INDEX64: tl.constexpr, SG_UNIT: tl.constexpr, SX_UNIT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``gx[n, c, i] = sum over (p, k) with p*s + k*d - pad = i of sum_o gy[n, o, p] * w[bank(p), o, k, c]``:
    a gather per input position (no atomics, one fixed order: deterministic). Its reduction runs
    over (reaching kernel offset j, output channel o), o fastest, flattened into ``J * Og`` and
    taken ``BLOCK_R`` at a time (no branch per offset, products of depth ``BLOCK_R``); only the
    offsets that can reach are enumerated (``J = prod(ceil(K_d / STEP_d))``), so a strided layer
    does not multiply zeros. Programs: batch blocks x (group, input-channel blocks) x
    input-position tiles (``P`` here counts input positions), batch fastest."""
    sgn, sgc, sgd, sgh, sgw = unit_strides(sgn, sgc, sgd, sgh, sgw, SG_UNIT)
    sxn, sxc, sxd, sxh, sxw = unit_strides(sxn, sxc, sxd, sxh, sxw, SX_UNIT)
    bn, g, bc, t, valid = program(tl.cdiv(N, BLOCK_N), tl.cdiv(Cg, BLOCK_C), G, tl.cdiv(P, BLOCK_P))
    if not valid:
        return
    i = t * BLOCK_P + tl.arange(0, BLOCK_P)
    i_ok = i < P
    i_d, i_h, i_w = position(i, IH, IW)
    kd0 = first_offset(i_d, PD, SD, DD, STEP_D, KD)[:, None]
    kh0 = first_offset(i_h, PH, SH, DH, STEP_H, KH)[:, None]
    kw0 = first_offset(i_w, PW, SW, DW, STEP_W, KW)[:, None]
    n = bn * BLOCK_N + tl.arange(0, BLOCK_N)
    c = bc * BLOCK_C + tl.arange(0, BLOCK_C)  # within the group
    n_ok = n < N
    c_ok = c < Cg
    gy_rows = gy_ptr + wide(n, INDEX64)[None, :, None] * sgn
    if KERNEL_MAJOR:
        w_c = wide(c, INDEX64)[None, None, :]
    else:
        w_c = wide(c, INDEX64)[None, None, :] * (KD * KH * KW)
    acc = tl.zeros((BLOCK_P, BLOCK_N, BLOCK_C), dtype=ACC)
    for r0 in range(0, J * Og, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        j = (r // Og)[None, :]
        o = g * Og + r % Og
        kd, pd, reach_d = reaching(kd0, j // (JH * JW), i_d[:, None], PD, SD, DD, STEP_D, KD, OD)
        kh, ph, reach_h = reaching(kh0, (j // JW) % JH, i_h[:, None], PH, SH, DH, STEP_H, KH, OH)
        kw, pw, reach_w = reaching(kw0, j % JW, i_w[:, None], PW, SW, DW, STEP_W, KW, OW)
        reaches = reach_d & reach_h & reach_w & (r < J * Og)[None, :] & i_ok[:, None]  # (BLOCK_P, BLOCK_R)
        bank = bank_of(bank_ptr, (pd.to(tl.int64) * OH + ph) * OW + pw, reaches, HAS_BANKS)
        gy_at = (wide(o, INDEX64)[None, :] * sgc + wide(pd, INDEX64) * sgd + wide(ph, INDEX64) * sgh
                 + wide(pw, INDEX64) * sgw)
        grads = tl.load(gy_rows + gy_at[:, None, :], mask=reaches[:, None, :] & n_ok[None, :, None], other=0.0)
        k = (kd * KH + kh) * KW + kw
        if KERNEL_MAJOR:
            w_k = k.to(tl.int64) * Cg
        else:
            w_k = k.to(tl.int64)
        w_at = bank_offset(bank, G, Og, R) + w_k + o.to(tl.int64)[None, :] * R
        # (through L1: with a channel-major weight these are 1-element gathers whose sectors the
        # neighbouring input positions of the tile read too)
        filters = tl.load(w_ptr + w_at[:, :, None] + w_c, mask=reaches[:, :, None] & c_ok[None, None, :], other=0.0,
                          cache_modifier=".ca")
        acc = mma(grads, filters, acc, BLOCK_P, UPCAST, PRECISION)
    gx_at = gx_ptr + (i_d.to(tl.int64) * sxd + i_h.to(tl.int64) * sxh + i_w.to(tl.int64) * sxw)[:, None, None]
    gx_offsets = wide(n, INDEX64)[None, :, None] * sxn + wide(g * Cg + c, INDEX64)[None, None, :] * sxc
    tl.store(gx_at + gx_offsets, to_output(acc, gx_ptr, UPCAST),
             mask=i_ok[:, None, None] & n_ok[None, :, None] & c_ok[None, None, :])


@triton.jit
def weight_grad_kernel(
    x_ptr, gy_ptr, bank_ptr, gw_ptr,
    N, Cg, Og, G, R, P,
    ID, IH, IW, OH, OW, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sxn, sxc, sxd, sxh, sxw,
    sgn, sgc, sgd, sgh, sgw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, INDEX64: tl.constexpr, SX_UNIT: tl.constexpr, SG_UNIT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """``gw[bank(p), o, r] (+)= sum_n gy[n, o, p] * patch(x)[n, p, r]``, computed transposed as
    ``(R, N) @ (N, O)`` tiles (the reduction tile is the product's M dimension). Without banks each
    program owns its output tile (plain store); with banks the positions of one bank add into it
    atomically (``gw`` is then a zeroed accumulator in ``ACC``). Programs: reduction blocks x
    (group, output-channel blocks) x position tiles."""
    sxn, sxc, sxd, sxh, sxw = unit_strides(sxn, sxc, sxd, sxh, sxw, SX_UNIT)
    sgn, sgc, sgd, sgh, sgw = unit_strides(sgn, sgc, sgd, sgh, sgw, SG_UNIT)
    br, g, bo, t, valid = program(tl.cdiv(R, BLOCK_R), tl.cdiv(Og, BLOCK_O), G, tl.cdiv(P, BLOCK_P))
    if not valid:
        return
    p = t * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < P
    pd, ph, pw = position(p, OH, OW)
    r = br * BLOCK_R + tl.arange(0, BLOCK_R)
    o = g * Og + bo * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = bo * BLOCK_O + tl.arange(0, BLOCK_O) < Og
    offsets, inside = patch_offsets(r[None, :], R, Cg, KH, KW, pd[:, None], ph[:, None], pw[:, None], SD, SH, SW,
                                    PD, PH, PW, DD, DH, DW, ID, IH, IW, sxc, sxd, sxh, sxw, g * Cg, KERNEL_MAJOR,
                                    INDEX64)
    inside = inside & p_ok[:, None]
    gy_at = gy_ptr + (pd.to(tl.int64) * sgd + ph.to(tl.int64) * sgh + pw.to(tl.int64) * sgw)[:, None, None]
    gy_cols = gy_at + wide(o, INDEX64)[None, None, :] * sgc
    x_cols = x_ptr + offsets[:, :, None]
    acc = tl.zeros((BLOCK_P, BLOCK_R, BLOCK_O), dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < N
        patches = tl.load(x_cols + wide(n, INDEX64)[None, None, :] * sxn, mask=inside[:, :, None] & n_ok[None, None, :],
                          other=0.0, cache_modifier=".ca")
        grads = tl.load(gy_cols + wide(n, INDEX64)[None, :, None] * sgn,
                        mask=p_ok[:, None, None] & n_ok[None, :, None] & o_ok[None, None, :], other=0.0)
        acc = mma(patches, grads, acc, BLOCK_P, UPCAST, PRECISION)
    bank = bank_of(bank_ptr, p, p_ok, HAS_BANKS)
    gw_at = gw_ptr + bank_offset(bank, G, Og, R)[:, None, None]
    gw_offsets = wide(o, INDEX64)[None, None, :] * R + r[None, :, None]
    mask = p_ok[:, None, None] & (r < R)[None, :, None] & o_ok[None, None, :]
    if HAS_BANKS:
        tl.atomic_add(gw_at + gw_offsets, acc, mask=mask)
    else:
        tl.store(gw_at + gw_offsets, to_output(acc, gw_ptr, UPCAST), mask=mask)
