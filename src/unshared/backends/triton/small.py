"""Channel-poor Triton kernels (1-8 channels on the product's narrow side: genomics in 1d, the first
layer of an image network): CUDA-core FMAs over a tile of positions and a block of samples, with
no tensor-core tile padded to 16 channels. Same arguments and layouts as :mod:`.kernels` (whose
docstring describes them); the launcher chooses between the two families by shape (and, on a
GPU, by measuring). This module imports Triton.

Each program keeps a ``(BLOCK_N, BLOCK_P, channels)`` block of float32 (float64) sums in registers
and walks the reduction one element at a time: per step one ``(BLOCK_N, BLOCK_P)`` slab of the
input (or output gradient), which is contiguous along the positions for a unit stride, and one
``(BLOCK_P, channels)`` slab of filters.
"""
import triton
import triton.language as tl

from .common import (bank_of, bank_offset, first_offset, patch_offsets, position, program, reaching, to_output,
                     unit_strides, wide)


@triton.jit
def forward_small_kernel(
    x_ptr, w_ptr, bank_ptr, y_ptr,
    N, Cg, Og, G, R, P,
    ID, IH, IW, OH, OW, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sxn, sxc, sxd, sxh, sxw,
    syn, syc, syd, syh, syw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    INDEX64: tl.constexpr, SX_UNIT: tl.constexpr, SY_UNIT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """``y[n, o, p] = sum_r w[bank(p), o, r] * patch(x)[n, p, r]``, one reduction element per step."""
    sxn, sxc, sxd, sxh, sxw = unit_strides(sxn, sxc, sxd, sxh, sxw, SX_UNIT)
    syn, syc, syd, syh, syw = unit_strides(syn, syc, syd, syh, syw, SY_UNIT)
    bn, g, bo, t, valid = program(tl.cdiv(N, BLOCK_N), tl.cdiv(Og, BLOCK_O), G, tl.cdiv(P, BLOCK_P))
    if not valid:
        return
    p = t * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < P
    pd, ph, pw = position(p, OH, OW)
    n = bn * BLOCK_N + tl.arange(0, BLOCK_N)
    o = g * Og + bo * BLOCK_O + tl.arange(0, BLOCK_O)
    n_ok = n < N
    o_ok = bo * BLOCK_O + tl.arange(0, BLOCK_O) < Og
    x_rows = x_ptr + wide(n, INDEX64)[:, None] * sxn
    w_at = (w_ptr + bank_offset(bank_of(bank_ptr, p, p_ok, HAS_BANKS), G, Og, R)[:, None]
            + wide(o, INDEX64)[None, :] * R)
    w_ok = p_ok[:, None] & o_ok[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_P, BLOCK_O), dtype=ACC)
    for r in range(0, R):
        offsets, inside = patch_offsets(r, R, Cg, KH, KW, pd, ph, pw, SD, SH, SW, PD, PH, PW, DD, DH, DW,
                                        ID, IH, IW, sxc, sxd, sxh, sxw, g * Cg, KERNEL_MAJOR, INDEX64)
        inside = (inside != 0) & p_ok  # (a scalar r < R is a Python bool under the interpreter: int32 there)
        xv = tl.load(x_rows + offsets[None, :], mask=n_ok[:, None] & inside[None, :], other=0.0,
                     cache_modifier=".ca")
        wv = tl.load(w_at + r, mask=w_ok, other=0.0)
        acc += xv.to(ACC)[:, :, None] * wv.to(ACC)[None, :, :]
    y_at = y_ptr + (pd.to(tl.int64) * syd + ph.to(tl.int64) * syh + pw.to(tl.int64) * syw)[None, :, None]
    y_offsets = wide(n, INDEX64)[:, None, None] * syn + wide(o, INDEX64)[None, None, :] * syc
    tl.store(y_at + y_offsets, to_output(acc, y_ptr, UPCAST),
             mask=n_ok[:, None, None] & p_ok[None, :, None] & o_ok[None, None, :])


@triton.jit
def input_grad_small_kernel(
    gy_ptr, w_ptr, bank_ptr, gx_ptr,
    N, Cg, Og, G, R, P,
    ID, IH, IW, OD, OH, OW, KD, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    STEP_D, STEP_H, STEP_W, JH, JW, J,
    sgn, sgc, sgd, sgh, sgw,
    sxn, sxc, sxd, sxh, sxw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    INDEX64: tl.constexpr, SG_UNIT: tl.constexpr, SX_UNIT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``gx[n, c, i]``: a gather over the reaching kernel offsets (then output channels) of each
    input position, one ``(offset, output channel)`` per step; deterministic, no atomics."""
    sgn, sgc, sgd, sgh, sgw = unit_strides(sgn, sgc, sgd, sgh, sgw, SG_UNIT)
    sxn, sxc, sxd, sxh, sxw = unit_strides(sxn, sxc, sxd, sxh, sxw, SX_UNIT)
    bn, g, bc, t, valid = program(tl.cdiv(N, BLOCK_N), tl.cdiv(Cg, BLOCK_C), G, tl.cdiv(P, BLOCK_P))
    if not valid:
        return
    i = t * BLOCK_P + tl.arange(0, BLOCK_P)
    i_ok = i < P
    i_d, i_h, i_w = position(i, IH, IW)
    kd0 = first_offset(i_d, PD, SD, DD, STEP_D, KD)
    kh0 = first_offset(i_h, PH, SH, DH, STEP_H, KH)
    kw0 = first_offset(i_w, PW, SW, DW, STEP_W, KW)
    n = bn * BLOCK_N + tl.arange(0, BLOCK_N)
    c = bc * BLOCK_C + tl.arange(0, BLOCK_C)
    n_ok = n < N
    c_ok = c < Cg
    gy_rows = gy_ptr + wide(n, INDEX64)[:, None] * sgn
    if KERNEL_MAJOR:
        w_c = wide(c, INDEX64)[None, :]
    else:
        w_c = wide(c, INDEX64)[None, :] * (KD * KH * KW)
    acc = tl.zeros((BLOCK_N, BLOCK_P, BLOCK_C), dtype=ACC)
    for j in range(0, J):
        kd, pd, reach_d = reaching(kd0, j // (JH * JW), i_d, PD, SD, DD, STEP_D, KD, OD)
        kh, ph, reach_h = reaching(kh0, (j // JW) % JH, i_h, PH, SH, DH, STEP_H, KH, OH)
        kw, pw, reach_w = reaching(kw0, j % JW, i_w, PW, SW, DW, STEP_W, KW, OW)
        reaches = reach_d & reach_h & reach_w & i_ok
        bank = bank_of(bank_ptr, (pd.to(tl.int64) * OH + ph) * OW + pw, reaches, HAS_BANKS)
        gy_at = gy_rows + (wide(pd, INDEX64) * sgd + wide(ph, INDEX64) * sgh + wide(pw, INDEX64) * sgw)[None, :]
        k = (kd * KH + kh) * KW + kw
        if KERNEL_MAJOR:
            w_k = k.to(tl.int64) * Cg
        else:
            w_k = k.to(tl.int64)
        w_at = w_ptr + (bank_offset(bank, G, Og, R) + (g * Og) * R + w_k)[:, None] + w_c
        gy_at += (g * Og) * sgc
        g_ok = n_ok[:, None] & reaches[None, :]
        f_ok = reaches[:, None] & c_ok[None, :]
        for _ in range(0, Og):  # one output channel per step: the pointers advance
            gv = tl.load(gy_at, mask=g_ok, other=0.0)
            wv = tl.load(w_at, mask=f_ok, other=0.0)
            acc += gv.to(ACC)[:, :, None] * wv.to(ACC)[None, :, :]
            gy_at += sgc
            w_at += R
    gx_at = gx_ptr + (i_d.to(tl.int64) * sxd + i_h.to(tl.int64) * sxh + i_w.to(tl.int64) * sxw)[None, :, None]
    gx_offsets = wide(n, INDEX64)[:, None, None] * sxn + wide(g * Cg + c, INDEX64)[None, None, :] * sxc
    tl.store(gx_at + gx_offsets, to_output(acc, gx_ptr, UPCAST),
             mask=n_ok[:, None, None] & i_ok[None, :, None] & c_ok[None, None, :])


@triton.jit
def weight_grad_small_kernel(
    x_ptr, gy_ptr, bank_ptr, gw_ptr,
    N, Cg, Og, G, R, P,
    ID, IH, IW, OH, OW, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sxn, sxc, sxd, sxh, sxw,
    sgn, sgc, sgd, sgh, sgw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    INDEX64: tl.constexpr, SX_UNIT: tl.constexpr, SG_UNIT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """``gw[bank(p), o, r] (+)= sum_n gy[n, o, p] * patch(x)[n, p, r]``, one sample per step; with
    banks the positions of one bank add atomically into a zeroed ``ACC`` accumulator."""
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
    gy_at = (gy_ptr + (pd.to(tl.int64) * sgd + ph.to(tl.int64) * sgh + pw.to(tl.int64) * sgw)[:, None]
             + wide(o, INDEX64)[None, :] * sgc)
    g_ok = p_ok[:, None] & o_ok[None, :]
    acc = tl.zeros((BLOCK_P, BLOCK_R, BLOCK_O), dtype=ACC)
    x_at = x_ptr + offsets
    for _ in range(0, N):  # one sample per step: the pointers advance (in 64 bits)
        xv = tl.load(x_at, mask=inside, other=0.0, cache_modifier=".ca")
        gv = tl.load(gy_at, mask=g_ok, other=0.0)
        acc += xv.to(ACC)[:, :, None] * gv.to(ACC)[:, None, :]
        x_at += sxn
        gy_at += sgn
    bank = bank_of(bank_ptr, p, p_ok, HAS_BANKS)
    gw_at = gw_ptr + bank_offset(bank, G, Og, R)[:, None, None]
    gw_offsets = wide(o, INDEX64)[None, None, :] * R + r[None, :, None]
    mask = p_ok[:, None, None] & (r < R)[None, :, None] & o_ok[None, None, :]
    if HAS_BANKS:
        tl.atomic_add(gw_at + gw_offsets, acc, mask=mask)
    else:
        tl.store(gw_at + gw_offsets, to_output(acc, gw_ptr, UPCAST), mask=mask)
