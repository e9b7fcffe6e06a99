"""Triton kernels of the locally connected layer: forward, input gradient, weight gradient.

Imported only by :mod:`unshared.backends.triton_backend` when it computes (this module imports
Triton). One kernel family serves 1d, 2d and 3d: the launchers pad sizes to three spatial
dimensions with unit sizes and zero strides.

Every kernel is an implicit GEMM over one output (or input) position per program: the patches of
a block of samples are gathered from the input on the fly through its strides (zero padding by
masking, so no padded or unfolded copy exists), multiplied with that position's filters with
``tl.dot`` and accumulated in float32 (float64 for float64 inputs). The batch block varies
fastest over program ids, so the programs that share one position's filters run together and
read them from HBM once. Offsets are computed in int64.

Layouts (``P``: output positions, ``Pw``: positions or filter banks, ``R = prod(kernel) * Cg``):

- ``x``: ``(N, C, ID, IH, IW)``, any strides; ``y``/``grad_output``: ``(N, O, OD, OH, OW)``, any strides;
- weight: ``(Pw, O, R)`` contiguous, ``R`` ordered ``(kernel offset, input channel)`` when
  ``KERNEL_MAJOR``, else ``(input channel, kernel offset)`` (the two layouts of ``unshared._utils``);
- banks: ``(P,)`` int64 bank of each output position (read only when ``HAS_BANKS``).
"""
import os

import triton
import triton.language as tl

#: Under ``TRITON_INTERPRET=1`` (CPU, for tests) autotuning cannot benchmark: one configuration.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
INTERPRETER_BLOCKS = {"BLOCK_N": 16, "BLOCK_O": 16, "BLOCK_R": 32, "BLOCK_C": 16}


def _configs(blocks, warps=4, stages=3):
    return [triton.Config(dict(zip(("BLOCK_N", "BLOCK_O", "BLOCK_R", "BLOCK_C"), b)),
                          num_warps=warps, num_stages=stages) for b in blocks]


def _tuned(configs, key, **kwargs):
    """``triton.autotune`` on a GPU; the kernel itself (blocks passed by the launcher) when interpreting."""
    def wrap(kernel):
        return kernel if INTERPRET else triton.autotune(configs=configs, key=key, **kwargs)(kernel)
    return wrap


# (BLOCK_N, BLOCK_O, BLOCK_R, BLOCK_C): not tuned on hardware yet, a spread of plausible tiles
# (BLOCK_N 16 for small batches)
FORWARD_CONFIGS = _configs([(16, 16, 128, 16), (32, 16, 64, 16), (64, 16, 64, 16), (64, 32, 32, 16),
                            (128, 16, 32, 16), (32, 32, 64, 16), (64, 64, 32, 16)])
INPUT_GRAD_CONFIGS = _configs([(16, 16, 16, 32), (32, 16, 16, 32), (64, 16, 16, 16), (64, 16, 16, 32),
                               (128, 16, 16, 16), (32, 32, 16, 32), (64, 32, 16, 64)])
WEIGHT_GRAD_CONFIGS = _configs([(32, 16, 64, 16), (64, 16, 64, 16), (32, 16, 128, 16), (64, 32, 64, 16),
                                (128, 16, 32, 16), (64, 64, 64, 16)])


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + a @ b``. ``UPCAST`` converts the operands to float32 first (only needed by the
    interpreter, whose bfloat16 ``tl.dot`` gives wrong results)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _program(inner_blocks, channel_blocks, G):
    """This program's ``(inner block, group, channel block, position)`` on the 1-d grid, where
    the inner block varies fastest, then the channel block, the group, and the position."""
    pid = tl.program_id(0).to(tl.int64)
    rest = pid // inner_blocks
    return (pid % inner_blocks, (rest % (channel_blocks * G)) // channel_blocks, rest % channel_blocks,
            rest // (channel_blocks * G))


@triton.jit
def _position(p, OH, OW):
    """Flat output position -> (d, h, w)."""
    return p // (OH * OW), (p // OW) % OH, p % OW


@triton.jit
def _split_reduction(r, Cg, K, KERNEL_MAJOR: tl.constexpr):
    """Reduction index -> (kernel offset, input channel within the group)."""
    if KERNEL_MAJOR:
        return r // Cg, r % Cg
    else:
        return r % K, r // K


@triton.jit
def _patch_offsets(r, R, Cg, KH, KW, pd, ph, pw, SD, SH, SW, PD, PH, PW, DD, DH, DW, ID, IH, IW,
                   sxc, sxd, sxh, sxw, channel0, KERNEL_MAJOR: tl.constexpr):
    """For reduction indices ``r`` of output position ``(pd, ph, pw)``: the int64 input offsets
    (without the batch term) and which lie inside the unpadded input."""
    k, c = _split_reduction(r, Cg, R // Cg, KERNEL_MAJOR)
    c = channel0 + c
    i_d = pd * SD + (k // (KH * KW)) * DD - PD
    i_h = ph * SH + ((k // KW) % KH) * DH - PH
    i_w = pw * SW + (k % KW) * DW - PW
    inside = (r < R) & (i_d >= 0) & (i_d < ID) & (i_h >= 0) & (i_h < IH) & (i_w >= 0) & (i_w < IW)
    offsets = (c.to(tl.int64) * sxc + i_d.to(tl.int64) * sxd + i_h.to(tl.int64) * sxh
               + i_w.to(tl.int64) * sxw)
    return offsets, inside


@_tuned(FORWARD_CONFIGS, key=["N", "Og", "Cg", "R", "G"])
@triton.jit
def forward_kernel(
    x_ptr, w_ptr, bank_ptr, y_ptr,
    N, Cg, Og, G, R,
    ID, IH, IW, OH, OW, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sxn, sxc, sxd, sxh, sxw,
    syn, syc, syd, syh, syw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``y[n, o, p] = sum_r w[bank(p), o, r] * patch(x)[n, p, r]``; programs: batch blocks x
    (group, output-channel blocks) x positions, batch fastest."""
    bn, g, bo, p = _program(tl.cdiv(N, BLOCK_N), tl.cdiv(Og, BLOCK_O), G)
    pd, ph, pw = _position(p, OH, OW)
    if HAS_BANKS:
        bank = tl.load(bank_ptr + p)
    else:
        bank = p

    n = bn * BLOCK_N + tl.arange(0, BLOCK_N)
    o = g * Og + bo * BLOCK_O + tl.arange(0, BLOCK_O)
    n_ok = n < N
    o_ok = bo * BLOCK_O + tl.arange(0, BLOCK_O) < Og
    x_rows = x_ptr + n.to(tl.int64)[:, None] * sxn
    w_cols = w_ptr + bank * (G * Og * R) + o.to(tl.int64)[None, :] * R
    acc = tl.zeros((BLOCK_N, BLOCK_O), dtype=ACC)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        offsets, inside = _patch_offsets(r, R, Cg, KH, KW, pd, ph, pw, SD, SH, SW, PD, PH, PW, DD, DH,
                                         DW, ID, IH, IW, sxc, sxd, sxh, sxw, g * Cg, KERNEL_MAJOR)
        patches = tl.load(x_rows + offsets[None, :], mask=n_ok[:, None] & inside[None, :], other=0.0)
        filters = tl.load(w_cols + r[:, None], mask=(r < R)[:, None] & o_ok[None, :], other=0.0)
        acc = _dot(patches, filters, acc, UPCAST, PRECISION)
    y_offsets = (n.to(tl.int64)[:, None] * syn + o.to(tl.int64)[None, :] * syc
                 + pd * syd + ph * syh + pw * syw)
    tl.store(y_ptr + y_offsets, acc.to(y_ptr.dtype.element_ty), mask=n_ok[:, None] & o_ok[None, :])


@_tuned(INPUT_GRAD_CONFIGS, key=["N", "Og", "Cg", "R", "G"])
@triton.jit
def input_grad_kernel(
    gy_ptr, w_ptr, bank_ptr, gx_ptr,
    N, Cg, Og, G, R,
    ID, IH, IW, OD, OH, OW, KD, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sgn, sgc, sgd, sgh, sgw,
    sxn, sxc, sxd, sxh, sxw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``gx[n, c, i] = sum over (p, k) with p*s + k*d - pad = i of sum_o gy[n, o, p] * w[bank(p), o, k, c]``:
    a gather over the kernel offsets that reach input position ``i`` (no atomics). Programs:
    batch blocks x (group, input-channel blocks) x input positions, batch fastest."""
    bn, g, bc, i = _program(tl.cdiv(N, BLOCK_N), tl.cdiv(Cg, BLOCK_C), G)
    i_d, i_h, i_w = _position(i, IH, IW)

    n = bn * BLOCK_N + tl.arange(0, BLOCK_N)
    c = bc * BLOCK_C + tl.arange(0, BLOCK_C)  # within the group
    n_ok = n < N
    c_ok = c < Cg
    gy_rows = gy_ptr + n.to(tl.int64)[:, None] * sgn
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC)
    for k in range(0, KD * KH * KW):
        kd = k // (KH * KW)
        kh = (k // KW) % KH
        kw = k % KW
        td = i_d + PD - kd * DD
        th = i_h + PH - kh * DH
        tw = i_w + PW - kw * DW
        reaches = ((td >= 0) & (td % SD == 0) & (td // SD < OD) & (th >= 0) & (th % SH == 0)
                   & (th // SH < OH) & (tw >= 0) & (tw % SW == 0) & (tw // SW < OW))
        if reaches:
            pd = td // SD
            ph = th // SH
            pw = tw // SW
            p = (pd * OH + ph) * OW + pw
            if HAS_BANKS:
                bank = tl.load(bank_ptr + p)
            else:
                bank = p
            if KERNEL_MAJOR:
                w_base = w_ptr + bank * (G * Og * R) + k * Cg + c.to(tl.int64)[None, :]
            else:
                w_base = w_ptr + bank * (G * Og * R) + k + c.to(tl.int64)[None, :] * (KD * KH * KW)
            gy_pos = gy_rows + pd * sgd + ph * sgh + pw * sgw
            for o0 in range(0, Og, BLOCK_O):
                o = o0 + tl.arange(0, BLOCK_O)
                o_ok = o < Og
                grads = tl.load(gy_pos + (g * Og + o).to(tl.int64)[None, :] * sgc,
                                mask=n_ok[:, None] & o_ok[None, :], other=0.0)
                filters = tl.load(w_base + (g * Og + o).to(tl.int64)[:, None] * R,
                                  mask=o_ok[:, None] & c_ok[None, :], other=0.0)
                acc = _dot(grads, filters, acc, UPCAST, PRECISION)
    gx_offsets = (n.to(tl.int64)[:, None] * sxn + (g * Cg + c).to(tl.int64)[None, :] * sxc
                  + i_d * sxd + i_h * sxh + i_w * sxw)
    tl.store(gx_ptr + gx_offsets, acc.to(gx_ptr.dtype.element_ty), mask=n_ok[:, None] & c_ok[None, :])


@_tuned(WEIGHT_GRAD_CONFIGS, key=["N", "Og", "Cg", "R", "G"], reset_to_zero=["gw_ptr"])
@triton.jit
def weight_grad_kernel(
    x_ptr, gy_ptr, bank_ptr, gw_ptr,
    N, Cg, Og, G, R,
    ID, IH, IW, OH, OW, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sxn, sxc, sxd, sxh, sxw,
    sgn, sgc, sgd, sgh, sgw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``gw[bank(p), o, r] (+)= sum_n gy[n, o, p] * patch(x)[n, p, r]``. Without banks each
    program owns its output tile (plain store); with banks the positions of one bank add into it
    atomically (``gw`` is then a zeroed accumulator in ``ACC``). Programs: reduction blocks x
    (group, output-channel blocks) x positions."""
    br, g, bo, p = _program(tl.cdiv(R, BLOCK_R), tl.cdiv(Og, BLOCK_O), G)
    pd, ph, pw = _position(p, OH, OW)

    r = br * BLOCK_R + tl.arange(0, BLOCK_R)
    o = g * Og + bo * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = bo * BLOCK_O + tl.arange(0, BLOCK_O) < Og
    offsets, inside = _patch_offsets(r, R, Cg, KH, KW, pd, ph, pw, SD, SH, SW, PD, PH, PW, DD, DH, DW,
                                     ID, IH, IW, sxc, sxd, sxh, sxw, g * Cg, KERNEL_MAJOR)
    gy_cols = gy_ptr + o.to(tl.int64)[:, None] * sgc + pd * sgd + ph * sgh + pw * sgw
    acc = tl.zeros((BLOCK_O, BLOCK_R), dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < N
        grads = tl.load(gy_cols + n.to(tl.int64)[None, :] * sgn, mask=o_ok[:, None] & n_ok[None, :], other=0.0)
        patches = tl.load(x_ptr + n.to(tl.int64)[:, None] * sxn + offsets[None, :],
                          mask=n_ok[:, None] & inside[None, :], other=0.0)
        acc = _dot(grads, patches, acc, UPCAST, PRECISION)
    if HAS_BANKS:
        bank = tl.load(bank_ptr + p)
    else:
        bank = p
    gw_offsets = bank * (G * Og * R) + o.to(tl.int64)[:, None] * R + r[None, :]
    mask = o_ok[:, None] & (r < R)[None, :]
    if HAS_BANKS:
        tl.atomic_add(gw_ptr + gw_offsets, acc, mask=mask)
    else:
        tl.store(gw_ptr + gw_offsets, acc.to(gw_ptr.dtype.element_ty), mask=mask)
