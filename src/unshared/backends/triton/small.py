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

from .common import (at_position, bank_of, bank_offset, filter_row, first_offsets, patch_offsets, reach,
                     store_output, store_weight_grad, tile, unit_strides, weight_channel, wide)


@triton.jit
def forward_small_kernel(
    x_ptr, w_ptr, bank_ptr, y_ptr,
    N, Cg, Og, G, R, P,
    ID, IH, IW, OH, OW, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sxn, sxc, sxd, sxh, sxw,
    syn, syc, syd, syh, syw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    INDEX64: tl.constexpr, BLOCKS64: tl.constexpr, SX_UNIT: tl.constexpr, SY_UNIT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """``y[n, o, p] = sum_r w[bank(p), o, r] * patch(x)[n, p, r]``, one reduction element per step."""
    sxn, sxc, sxd, sxh, sxw = unit_strides(sxn, sxc, sxd, sxh, sxw, SX_UNIT)
    syn, syc, syd, syh, syw = unit_strides(syn, syc, syd, syh, syw, SY_UNIT)
    n, n_ok, g, o, o_ok, p, p_ok, pd, ph, pw, valid = tile(N, Og, G, P, OH, OW, BLOCK_N, BLOCK_O, BLOCK_P, BLOCKS64)
    if not valid:
        return
    x_rows = x_ptr + wide(n, INDEX64)[:, None] * sxn
    w_at = (w_ptr + bank_offset(bank_of(bank_ptr, p, p_ok, HAS_BANKS), G, Og, R)[:, None]
            + wide(o, INDEX64)[None, :] * R)
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
    INDEX64: tl.constexpr, BLOCKS64: tl.constexpr, SG_UNIT: tl.constexpr, SX_UNIT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``gx[n, c, i]``: a gather over the reaching kernel offsets (then output channels) of each
    input position, one ``(offset, output channel)`` per step; deterministic, no atomics."""
    sgn, sgc, sgd, sgh, sgw = unit_strides(sgn, sgc, sgd, sgh, sgw, SG_UNIT)
    sxn, sxc, sxd, sxh, sxw = unit_strides(sxn, sxc, sxd, sxh, sxw, SX_UNIT)
    n, n_ok, g, c, c_ok, i, i_ok, i_d, i_h, i_w, valid = tile(N, Cg, G, P, IH, IW, BLOCK_N, BLOCK_C, BLOCK_P, BLOCKS64)
    if not valid:
        return
    kd0, kh0, kw0 = first_offsets(i_d, i_h, i_w, PD, PH, PW, SD, SH, SW, DD, DH, DW, STEP_D, STEP_H, STEP_W, KD, KH, KW)
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


@triton.jit
def weight_grad_small_kernel(
    x_ptr, gy_ptr, bank_ptr, gw_ptr,
    N, Cg, Og, G, R, P,
    ID, IH, IW, OH, OW, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sxn, sxc, sxd, sxh, sxw,
    sgn, sgc, sgd, sgh, sgw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    INDEX64: tl.constexpr, BLOCKS64: tl.constexpr, SX_UNIT: tl.constexpr, SG_UNIT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """``gw[bank(p), o, r] (+)= sum_n gy[n, o, p] * patch(x)[n, p, r]``, one sample per step; with
    banks the positions of one bank add atomically into a zeroed ``ACC`` accumulator."""
    sxn, sxc, sxd, sxh, sxw = unit_strides(sxn, sxc, sxd, sxh, sxw, SX_UNIT)
    sgn, sgc, sgd, sgh, sgw = unit_strides(sgn, sgc, sgd, sgh, sgw, SG_UNIT)
    r, r_ok, g, o, o_ok, p, p_ok, pd, ph, pw, valid = tile(R, Og, G, P, OH, OW, BLOCK_R, BLOCK_O, BLOCK_P, BLOCKS64)
    if not valid:
        return
    offsets, inside = patch_offsets(r[None, :], R, Cg, KH, KW, pd[:, None], ph[:, None], pw[:, None], p_ok[:, None],
                                    SD, SH, SW, PD, PH, PW, DD, DH, DW, ID, IH, IW, sxc, sxd, sxh, sxw, g * Cg,
                                    KERNEL_MAJOR, INDEX64)
    gy_at = gy_ptr + at_position(pd, ph, pw, sgd, sgh, sgw)[:, None] + wide(o, INDEX64)[None, :] * sgc
    g_ok = p_ok[:, None] & o_ok[None, :]
    acc = tl.zeros((BLOCK_P, BLOCK_R, BLOCK_O), dtype=ACC)
    x_at = x_ptr + offsets
    for _ in range(0, N):  # one sample per step: the pointers advance (in 64 bits)
        xv = tl.load(x_at, mask=inside, other=0.0, cache_modifier=".ca")
        gv = tl.load(gy_at, mask=g_ok, other=0.0)
        acc += xv.to(ACC)[:, :, None] * gv.to(ACC)[:, None, :]
        x_at += sxn
        gy_at += sgn
    store_weight_grad(acc, gw_ptr, bank_ptr, p, p_ok, r, r_ok, o, o_ok, G, Og, R, HAS_BANKS, UPCAST, INDEX64)
