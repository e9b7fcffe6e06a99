"""Triton kernels of the locally connected layer: forward, input gradient, weight gradient.

Imported only by :mod:`unshared.backends.triton.launch` when it computes (this module imports
Triton). One kernel family serves 1d, 2d and 3d: the launcher pads sizes to three spatial
dimensions with unit sizes and zero strides.

Every kernel is an implicit GEMM over one output (or input) position per program: the patches of
a block of samples are gathered from the input on the fly through its strides (zero padding by
masking, so no padded or unfolded copy exists), multiplied with that position's filters with
``tl.dot`` and accumulated in float32 (float64 for float64 inputs). The batch block varies
fastest over program ids, so the programs that share one position's filters run together and
read them from HBM once. Program ids and each program's base offsets are int64 scalars folded
into the pointers; the per-element offsets are int32 (fewer registers) unless ``INDEX64`` (a
tensor of 2^31 elements or more). The programs lie on a 2-d grid (its x dimension first), which
lifts the 2^31 - 1 limit of a 1-d grid.

Layouts (``P``: output positions, ``Pw``: positions or filter banks, ``R = prod(kernel) * Cg``):

- ``x``: ``(N, C, ID, IH, IW)``, any strides; ``y``/``grad_output``: ``(N, O, OD, OH, OW)``, any strides;
- weight: ``(Pw, O, R)`` contiguous, ``R`` ordered ``(kernel offset, input channel)`` when
  ``KERNEL_MAJOR``, else ``(input channel, kernel offset)`` (the two layouts of ``unshared._utils``);
- banks: ``(P,)`` int64 bank of each output position (read only when ``HAS_BANKS``).
"""
import triton
import triton.language as tl

from . import configs

#: Decided once, when the kernels are defined (Triton decides then too).
INTERPRET = configs.interpreting()


def _tuned(kernel_name: str, **kwargs):
    """``triton.autotune`` over the kernel's configurations on a GPU; the plain kernel (blocks
    passed by the launcher) when interpreting."""
    names = ("BLOCK_N", "BLOCK_O", "BLOCK_R", "BLOCK_C")
    tuned = [triton.Config(dict(zip(names, c[:4])), num_warps=c[4], num_stages=c[5])
             for c in configs.CONFIGS[kernel_name]]

    def wrap(kernel):
        return kernel if INTERPRET else triton.autotune(configs=tuned, key=configs.AUTOTUNE_KEY, **kwargs)(kernel)
    return wrap


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + a @ b``. ``UPCAST`` converts the operands to float32 first (only needed by the
    interpreter, whose bfloat16 ``tl.dot`` gives wrong results)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee", out_dtype=acc.dtype)
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def _program(inner_blocks, channel_blocks, G, positions):
    """This program's ``(inner block, group, channel block, position, valid)``: the inner block
    varies fastest, then the channel block, the group, and the position. ``valid`` is false for
    the excess programs of the last grid row, which return at once."""
    pid = tl.program_id(0).to(tl.int64) + tl.program_id(1).to(tl.int64) * tl.num_programs(0)
    total = (pid * 0 + inner_blocks) * channel_blocks * G * positions  # int64, even for constexpr sizes
    valid = pid < total
    rest = pid // inner_blocks
    return (pid % inner_blocks, (rest % (channel_blocks * G)) // channel_blocks, rest % channel_blocks,
            rest // (channel_blocks * G), valid)


@triton.jit
def _position(p, OH, OW):
    """Flat (int64) position -> its (d, h, w) coordinates, int32."""
    return (p // (OH * OW)).to(tl.int32), ((p // OW) % OH).to(tl.int32), (p % OW).to(tl.int32)


@triton.jit
def _wide(index, INDEX64: tl.constexpr):
    """Per-element offsets: int64 only when a tensor is too large for int32."""
    if INDEX64:
        return index.to(tl.int64)
    else:
        return index


@triton.jit
def _split_reduction(r, Cg, K, KERNEL_MAJOR: tl.constexpr):
    """Reduction index -> (kernel offset, input channel within the group)."""
    if KERNEL_MAJOR:
        return r // Cg, r % Cg
    else:
        return r % K, r // K


@triton.jit
def _patch_offsets(r, R, Cg, KH, KW, pd, ph, pw, SD, SH, SW, PD, PH, PW, DD, DH, DW, ID, IH, IW,
                   sxc, sxd, sxh, sxw, channel0, KERNEL_MAJOR: tl.constexpr, INDEX64: tl.constexpr):
    """For reduction indices ``r`` of output position ``(pd, ph, pw)``: the input offsets
    (without the batch term) and which lie inside the unpadded input."""
    k, c = _split_reduction(r, Cg, R // Cg, KERNEL_MAJOR)
    c = channel0 + c
    i_d = pd * SD + (k // (KH * KW)) * DD - PD
    i_h = ph * SH + ((k // KW) % KH) * DH - PH
    i_w = pw * SW + (k % KW) * DW - PW
    inside = (r < R) & (i_d >= 0) & (i_d < ID) & (i_h >= 0) & (i_h < IH) & (i_w >= 0) & (i_w < IW)
    offsets = (_wide(c, INDEX64) * sxc + _wide(i_d, INDEX64) * sxd + _wide(i_h, INDEX64) * sxh
               + _wide(i_w, INDEX64) * sxw)
    return offsets, inside


@triton.jit
def _bank_offset(bank, G, Og, R):
    """Element offset of filter bank ``bank`` (int64) in the ``(banks, G * Og, R)`` weight: int64
    throughout (``G * Og * R`` first would be an int32 product, wrong past 2^31 elements)."""
    return bank.to(tl.int64) * G * Og * R


@triton.jit
def _bank(bank_ptr, p, HAS_BANKS: tl.constexpr):
    """The filter bank (int64) of output position ``p``: itself, or its entry in the bank index."""
    if HAS_BANKS:
        return tl.load(bank_ptr + p)
    else:
        return p.to(tl.int64)


@_tuned("forward")
@triton.jit
def forward_kernel(
    x_ptr, w_ptr, bank_ptr, y_ptr,
    N, Cg, Og, G, R, P, N_BUCKET, P_BUCKET,
    ID, IH, IW, OH, OW, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sxn, sxc, sxd, sxh, sxw,
    syn, syc, syd, syh, syw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, INDEX64: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``y[n, o, p] = sum_r w[bank(p), o, r] * patch(x)[n, p, r]``; programs: batch blocks x
    (group, output-channel blocks) x positions, batch fastest."""
    bn, g, bo, p, valid = _program(tl.cdiv(N, BLOCK_N), tl.cdiv(Og, BLOCK_O), G, P)
    if not valid:
        return
    pd, ph, pw = _position(p, OH, OW)
    bank = _bank(bank_ptr, p, HAS_BANKS)

    n = bn * BLOCK_N + tl.arange(0, BLOCK_N)
    o = g * Og + bo * BLOCK_O + tl.arange(0, BLOCK_O)
    n_ok = n < N
    o_ok = bo * BLOCK_O + tl.arange(0, BLOCK_O) < Og
    x_rows = x_ptr + _wide(n, INDEX64)[:, None] * sxn
    w_cols = (w_ptr + _bank_offset(bank, G, Og, R)) + _wide(o, INDEX64)[None, :] * R
    acc = tl.zeros((BLOCK_N, BLOCK_O), dtype=ACC)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        offsets, inside = _patch_offsets(r, R, Cg, KH, KW, pd, ph, pw, SD, SH, SW, PD, PH, PW, DD, DH,
                                         DW, ID, IH, IW, sxc, sxd, sxh, sxw, g * Cg, KERNEL_MAJOR, INDEX64)
        patches = tl.load(x_rows + offsets[None, :], mask=n_ok[:, None] & inside[None, :], other=0.0)
        filters = tl.load(w_cols + r[:, None], mask=(r < R)[:, None] & o_ok[None, :], other=0.0)
        acc = _dot(patches, filters, acc, UPCAST, PRECISION)
    y_at = y_ptr + (pd.to(tl.int64) * syd + ph.to(tl.int64) * syh + pw.to(tl.int64) * syw)
    y_offsets = _wide(n, INDEX64)[:, None] * syn + _wide(o, INDEX64)[None, :] * syc
    tl.store(y_at + y_offsets, acc.to(y_ptr.dtype.element_ty), mask=n_ok[:, None] & o_ok[None, :])


@_tuned("input_grad")
@triton.jit
def input_grad_kernel(
    gy_ptr, w_ptr, bank_ptr, gx_ptr,
    N, Cg, Og, G, R, P, N_BUCKET, P_BUCKET,
    ID, IH, IW, OD, OH, OW, KD, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sgn, sgc, sgd, sgh, sgw,
    sxn, sxc, sxd, sxh, sxw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, INDEX64: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``gx[n, c, i] = sum over (p, k) with p*s + k*d - pad = i of sum_o gy[n, o, p] * w[bank(p), o, k, c]``:
    a gather over the kernel offsets that reach input position ``i`` (no atomics). Programs:
    batch blocks x (group, input-channel blocks) x input positions (``P`` here), batch fastest."""
    bn, g, bc, i, valid = _program(tl.cdiv(N, BLOCK_N), tl.cdiv(Cg, BLOCK_C), G, P)
    if not valid:
        return
    i_d, i_h, i_w = _position(i, IH, IW)

    n = bn * BLOCK_N + tl.arange(0, BLOCK_N)
    c = bc * BLOCK_C + tl.arange(0, BLOCK_C)  # within the group
    n_ok = n < N
    c_ok = c < Cg
    gy_rows = gy_ptr + _wide(n, INDEX64)[:, None] * sgn
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
            bank = _bank(bank_ptr, (pd * OH + ph) * OW + pw, HAS_BANKS)
            if KERNEL_MAJOR:
                w_base = (w_ptr + _bank_offset(bank, G, Og, R) + k * Cg) + _wide(c, INDEX64)[None, :]
            else:
                w_base = (w_ptr + _bank_offset(bank, G, Og, R) + k) + _wide(c, INDEX64)[None, :] * (KD * KH * KW)
            gy_pos = gy_rows + (pd.to(tl.int64) * sgd + ph.to(tl.int64) * sgh + pw.to(tl.int64) * sgw)
            for o0 in range(0, Og, BLOCK_O):
                o = o0 + tl.arange(0, BLOCK_O)
                o_ok = o < Og
                grads = tl.load(gy_pos + _wide(g * Og + o, INDEX64)[None, :] * sgc,
                                mask=n_ok[:, None] & o_ok[None, :], other=0.0)
                filters = tl.load(w_base + _wide(g * Og + o, INDEX64)[:, None] * R,
                                  mask=o_ok[:, None] & c_ok[None, :], other=0.0)
                acc = _dot(grads, filters, acc, UPCAST, PRECISION)
    gx_at = gx_ptr + (i_d.to(tl.int64) * sxd + i_h.to(tl.int64) * sxh + i_w.to(tl.int64) * sxw)
    gx_offsets = _wide(n, INDEX64)[:, None] * sxn + _wide(g * Cg + c, INDEX64)[None, :] * sxc
    tl.store(gx_at + gx_offsets, acc.to(gx_ptr.dtype.element_ty), mask=n_ok[:, None] & c_ok[None, :])


@_tuned("weight_grad", reset_to_zero=["gw_ptr"])
@triton.jit
def weight_grad_kernel(
    x_ptr, gy_ptr, bank_ptr, gw_ptr,
    N, Cg, Og, G, R, P, N_BUCKET, P_BUCKET,
    ID, IH, IW, OH, OW, KH, KW,
    SD, SH, SW, PD, PH, PW, DD, DH, DW,
    sxn, sxc, sxd, sxh, sxw,
    sgn, sgc, sgd, sgh, sgw,
    HAS_BANKS: tl.constexpr, KERNEL_MAJOR: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, INDEX64: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``gw[bank(p), o, r] (+)= sum_n gy[n, o, p] * patch(x)[n, p, r]``, computed transposed as
    ``(R, N) @ (N, O)`` tiles (the reduction tile is the product's M dimension). Without banks each
    program owns its output tile (plain store); with banks the positions of one bank add into it
    atomically (``gw`` is then a zeroed accumulator in ``ACC``). Programs: reduction blocks x
    (group, output-channel blocks) x positions."""
    br, g, bo, p, valid = _program(tl.cdiv(R, BLOCK_R), tl.cdiv(Og, BLOCK_O), G, P)
    if not valid:
        return
    pd, ph, pw = _position(p, OH, OW)

    r = br * BLOCK_R + tl.arange(0, BLOCK_R)
    o = g * Og + bo * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = bo * BLOCK_O + tl.arange(0, BLOCK_O) < Og
    offsets, inside = _patch_offsets(r, R, Cg, KH, KW, pd, ph, pw, SD, SH, SW, PD, PH, PW, DD, DH, DW,
                                     ID, IH, IW, sxc, sxd, sxh, sxw, g * Cg, KERNEL_MAJOR, INDEX64)
    gy_at = gy_ptr + (pd.to(tl.int64) * sgd + ph.to(tl.int64) * sgh + pw.to(tl.int64) * sgw)
    gy_cols = gy_at + _wide(o, INDEX64)[None, :] * sgc
    x_cols = x_ptr + offsets[:, None]
    acc = tl.zeros((BLOCK_R, BLOCK_O), dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < N
        patches = tl.load(x_cols + _wide(n, INDEX64)[None, :] * sxn, mask=inside[:, None] & n_ok[None, :], other=0.0)
        grads = tl.load(gy_cols + _wide(n, INDEX64)[:, None] * sgn, mask=n_ok[:, None] & o_ok[None, :], other=0.0)
        acc = _dot(patches, grads, acc, UPCAST, PRECISION)
    bank = _bank(bank_ptr, p, HAS_BANKS)
    gw_at = gw_ptr + _bank_offset(bank, G, Og, R)
    gw_offsets = _wide(o, INDEX64)[None, :] * R + r[:, None]
    mask = (r < R)[:, None] & o_ok[None, :]
    if HAS_BANKS:
        tl.atomic_add(gw_at + gw_offsets, acc, mask=mask)
    else:
        tl.store(gw_at + gw_offsets, acc.to(gw_ptr.dtype.element_ty), mask=mask)
