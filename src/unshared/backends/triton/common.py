"""The ``@triton.jit`` helpers that the two families of :mod:`.kernels` (tensor-core and
channel-poor) share: the program's tile (program decomposition, blocks, positions),
patch and gather arithmetic, filter banks, the matrix product, the output rounding and the
weight gradient's store. They are broadcast-agnostic: each family passes its own tile shapes.
This module imports Triton."""
import triton
import triton.language as tl


@triton.jit
def program(inner_blocks, channel_blocks, G, tiles, BLOCKS64: tl.constexpr):
    """This program's ``(inner block, group, channel block, tile, valid)``: the inner block varies
    fastest, then the channel block, the group, and the position tile. ``valid`` is false for
    the excess programs of the last grid row, which return at once. int64 with ``BLOCKS64``,
    else int32 (see ``launch._blocks64``): ptxas makes a 64-bit division a subroutine call, around
    which it spilled the registers of the channel-poor kernels (tests/test_triton_compile.py)."""
    if BLOCKS64:
        pid = tl.program_id(0).to(tl.int64) + tl.program_id(1).to(tl.int64) * tl.num_programs(0)
    else:
        pid = tl.program_id(0) + tl.program_id(1) * tl.num_programs(0)
    total = (pid * 0 + inner_blocks) * channel_blocks * G * tiles  # pid's type, even for constexpr sizes
    valid = pid < total
    rest = pid // inner_blocks
    return (pid % inner_blocks, (rest % (channel_blocks * G)) // channel_blocks, rest % channel_blocks,
            rest // (channel_blocks * G), valid)


@triton.jit
def block(b, BLOCK: tl.constexpr, size):
    """The indices of block ``b`` of a dimension of ``size`` and which of them lie inside it."""
    index = b * BLOCK + tl.arange(0, BLOCK)
    return index, index < size


@triton.jit
def position(p, OH, OW):
    """Flat positions -> their (d, h, w) coordinates, int32."""
    return (p // (OH * OW)).to(tl.int32), ((p // OW) % OH).to(tl.int32), (p % OW).to(tl.int32)


@triton.jit
def tile(INNER, C, G, P, OH, OW, BLOCK_INNER: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
         BLOCKS64: tl.constexpr):
    """This program's tile (programs: inner blocks x (group, channel blocks) x position tiles, the
    inner block fastest): ``(inner, inner_ok, g, c, c_ok, p, p_ok, pd, ph, pw, valid)``, the
    indices of the inner dimension (of size ``INNER``: the batch, or the weight gradient's
    reduction), the group, the layer's channels (a block of the group's ``C``), the flat positions
    (of ``P``, on an ``(., OH, OW)`` grid) and their coordinates, each block's indices with which
    lie inside (int32 unless ``BLOCKS64``); ``valid`` is false for the excess programs, which
    must return at once."""
    bi, g, bc, t, valid = program(tl.cdiv(INNER, BLOCK_INNER), tl.cdiv(C, BLOCK_C), G, tl.cdiv(P, BLOCK_P), BLOCKS64)
    inner, inner_ok = block(bi, BLOCK_INNER, INNER)
    c, c_ok = block(bc, BLOCK_C, C)
    p, p_ok = block(t, BLOCK_P, P)
    pd, ph, pw = position(p, OH, OW)
    return inner, inner_ok, g, g * C + c, c_ok, p, p_ok, pd, ph, pw, valid


@triton.jit
def at_position(d, h, w, sd, sh, sw):
    """The element offsets (int64) of spatial coordinates ``(d, h, w)`` for strides ``(sd, sh, sw)``."""
    return d.to(tl.int64) * sd + h.to(tl.int64) * sh + w.to(tl.int64) * sw


@triton.jit
def wide(index, INDEX64: tl.constexpr):
    """Per-element offsets: int64 only when a tensor is too large for int32."""
    if INDEX64:
        return index.to(tl.int64)
    else:
        return index


@triton.jit
def split_reduction(r, Cg, K, KERNEL_MAJOR: tl.constexpr):
    """Reduction index -> (kernel offset, input channel within the group)."""
    if KERNEL_MAJOR:
        return r // Cg, r % Cg
    else:
        return r % K, r // K


@triton.jit
def patch_offsets(r, R, Cg, KH, KW, pd, ph, pw, ok, SD, SH, SW, PD, PH, PW, DD, DH, DW, ID, IH, IW,
                  sxc, sxd, sxh, sxw, channel0, KERNEL_MAJOR: tl.constexpr, INDEX64: tl.constexpr):
    """For reduction indices ``r`` of output positions ``(pd, ph, pw)`` (broadcast against each
    other): the input offsets (without the batch term) and which lie inside the unpadded input
    (and where ``ok``)."""
    k, c = split_reduction(r, Cg, R // Cg, KERNEL_MAJOR)
    c = channel0 + c
    i_d = pd * SD + (k // (KH * KW)) * DD - PD
    i_h = ph * SH + ((k // KW) % KH) * DH - PH
    i_w = pw * SW + (k % KW) * DW - PW
    inside = (r < R) & (i_d >= 0) & (i_d < ID) & (i_h >= 0) & (i_h < IH) & (i_w >= 0) & (i_w < IW)
    offsets = (wide(c, INDEX64) * sxc + wide(i_d, INDEX64) * sxd + wide(i_h, INDEX64) * sxh
               + wide(i_w, INDEX64) * sxw)
    # (!= 0: with a scalar r, r < R is a Python bool under the interpreter, and the product int32)
    return offsets, (inside != 0) & ok


@triton.jit
def first_offset(i, PAD, S, DIL, STEP, K):
    """Per input coordinate ``i``: the smallest kernel offset ``k`` with ``(i + PAD - k * DIL) % S == 0``
    (the offsets that reach ``i`` are then ``k + j * STEP``, ``STEP = S / gcd(S, DIL)``), or ``K``
    when none does."""
    first = i * 0 + K
    for t in range(0, STEP):
        first = tl.where((first == K) & ((i + PAD - t * DIL) % S == 0), t, first)
    return first


@triton.jit
def reaching(first, j, i, PAD, S, DIL, STEP, K, O):
    """Kernel offset ``first + j * STEP`` along one dimension, the output coordinate it reaches
    input coordinate ``i`` from, and whether it does (inside the kernel and the output)."""
    k = first + j * STEP
    t = i + PAD - k * DIL
    out = t // S
    return k, out, (k < K) & (t >= 0) & (out < O)


@triton.jit
def first_offsets(i_d, i_h, i_w, PD, PH, PW, SD, SH, SW, DD, DH, DW, STEP_D, STEP_H, STEP_W, KD, KH, KW):
    """:func:`first_offset` along each dimension of input coordinates ``(i_d, i_h, i_w)``."""
    return (first_offset(i_d, PD, SD, DD, STEP_D, KD), first_offset(i_h, PH, SH, DH, STEP_H, KH),
            first_offset(i_w, PW, SW, DW, STEP_W, KW))


@triton.jit
def reach(j, kd0, kh0, kw0, i_d, i_h, i_w, JH, JW, PD, PH, PW, SD, SH, SW, DD, DH, DW, STEP_D, STEP_H, STEP_W,
          KD, KH, KW, OD, OH, OW):
    """The ``j``-th reaching kernel offset (``j`` runs over ``(JD, JH, JW)``, row-major) of input
    coordinates ``(i_d, i_h, i_w)`` whose first offsets are ``(kd0, kh0, kw0)``: the flat kernel
    offset, the output coordinates it reaches them from, and whether it does."""
    kd, pd, reach_d = reaching(kd0, j // (JH * JW), i_d, PD, SD, DD, STEP_D, KD, OD)
    kh, ph, reach_h = reaching(kh0, (j // JW) % JH, i_h, PH, SH, DH, STEP_H, KH, OH)
    kw, pw, reach_w = reaching(kw0, j % JW, i_w, PW, SW, DW, STEP_W, KW, OW)
    return (kd * KH + kh) * KW + kw, pd, ph, pw, reach_d & reach_h & reach_w


@triton.jit
def bank_of(bank_ptr, p, ok, HAS_BANKS: tl.constexpr):
    """The filter banks (int64) of output positions ``p`` (where ``ok``): themselves, or their
    entries in the bank index."""
    if HAS_BANKS:
        return tl.load(bank_ptr + p, mask=ok, other=0)
    else:
        return p.to(tl.int64)


@triton.jit
def bank_offset(bank, G, Og, R):
    """Element offset of filter bank ``bank`` (int64) in the ``(banks, G * Og, R)`` weight: int64
    throughout (``G * Og * R`` first would be an int32 product, wrong past 2^31 elements)."""
    return bank.to(tl.int64) * G * Og * R


@triton.jit
def filter_row(bank_ptr, pd, ph, pw, ok, k, OH, OW, G, Og, R, Cg, HAS_BANKS: tl.constexpr,
               KERNEL_MAJOR: tl.constexpr):
    """The element offset (int64) in the weight of kernel offset ``k`` (input channel 0, output
    channel 0) of the filters of output positions ``(pd, ph, pw)`` (where ``ok``)."""
    bank = bank_of(bank_ptr, (pd.to(tl.int64) * OH + ph) * OW + pw, ok, HAS_BANKS)
    if KERNEL_MAJOR:
        return bank_offset(bank, G, Og, R) + k.to(tl.int64) * Cg
    else:
        return bank_offset(bank, G, Og, R) + k.to(tl.int64)


@triton.jit
def weight_channel(c, K, KERNEL_MAJOR: tl.constexpr, INDEX64: tl.constexpr):
    """The offsets of input channels ``c`` within a filter row (``K``: the kernel volume)."""
    if KERNEL_MAJOR:
        return wide(c, INDEX64)
    else:
        return wide(c, INDEX64) * K


@triton.jit
def mma(a, b, acc, BLOCK_P: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + a @ b`` per position: ``(BLOCK_P, M, K) @ (BLOCK_P, K, N)``; for one position a 2-d
    product (which sm_90 runs as wgmma; a batched one runs as mma.sync). ``UPCAST`` converts the
    operands to float32 first (only needed by the interpreter, whose bfloat16 ``tl.dot`` is wrong)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if BLOCK_P == 1:
        m: tl.constexpr = a.shape[1]
        k: tl.constexpr = a.shape[2]
        n: tl.constexpr = b.shape[2]
        a2 = tl.reshape(a, (m, k))
        b2 = tl.reshape(b, (k, n))
        c2 = tl.reshape(acc, (m, n))
        if UPCAST:
            c2 = tl.dot(a2, b2, c2, input_precision="ieee", out_dtype=acc.dtype)
        else:
            c2 = tl.dot(a2, b2, c2, input_precision=PRECISION, out_dtype=acc.dtype)
        return tl.reshape(c2, (1, m, n))
    else:
        if UPCAST:
            return tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)
        else:
            return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def to_output(acc, out_ptr, UPCAST: tl.constexpr):
    """``acc`` in the output's dtype, rounded to nearest even. Under the interpreter (``UPCAST``,
    bfloat16) the rounding is done here: Triton's interpreter (3.9) converts float32 to bfloat16
    by truncation, where a GPU rounds to nearest (``cvt.rn.bf16.f32``)."""
    if UPCAST:
        bits = acc.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        rounded = ((bits >> 16) << 16).to(tl.float32, bitcast=True)
        return tl.where(acc != acc, acc, rounded).to(out_ptr.dtype.element_ty)
    else:
        return acc.to(out_ptr.dtype.element_ty)


@triton.jit
def store_output(acc, out_ptr, spatial, p_ok, n, n_ok, sn, c, c_ok, sc, UPCAST: tl.constexpr, INDEX64: tl.constexpr):
    """Stores ``acc`` at ``out[n, c, position]`` (rounded to the output's dtype) where the positions,
    samples and channels are inside: ``spatial`` the positions' offsets (int64), ``sn``, ``sc`` the
    batch and channel strides; every tensor broadcast to ``acc``'s shape."""
    at = out_ptr + spatial + (wide(n, INDEX64) * sn + wide(c, INDEX64) * sc)
    tl.store(at, to_output(acc, out_ptr, UPCAST), mask=p_ok & n_ok & c_ok)


@triton.jit
def store_weight_grad(acc, gw_ptr, bank_ptr, p, p_ok, r, r_ok, o, o_ok, G, Og, R, HAS_BANKS: tl.constexpr,
                      UPCAST: tl.constexpr, INDEX64: tl.constexpr):
    """Writes a ``(BLOCK_P, BLOCK_R, BLOCK_O)`` weight-gradient tile (positions ``p``, reduction
    indices ``r``, output channels ``o``): without banks each program owns its tile (a plain
    store), with banks the positions of one bank add into it atomically (``gw`` is then a zeroed
    accumulator in ``acc``'s dtype)."""
    gw_at = gw_ptr + bank_offset(bank_of(bank_ptr, p, p_ok, HAS_BANKS), G, Og, R)[:, None, None]
    gw_offsets = wide(o, INDEX64)[None, None, :] * R + r[None, :, None]
    mask = p_ok[:, None, None] & r_ok[None, :, None] & o_ok[None, None, :]
    if HAS_BANKS:
        tl.atomic_add(gw_at + gw_offsets, acc, mask=mask)
    else:
        tl.store(gw_at + gw_offsets, to_output(acc, gw_ptr, UPCAST), mask=mask)


@triton.jit
def unit_strides(sn, sc, sd, sh, sw, UNIT: tl.constexpr):
    """The strides of an ``(N, C, D, H, W)`` tensor, the one of dimension ``UNIT`` (-1: none) the
    constant 1, so that Triton can prove the contiguity that makes 16-byte loads and stores."""
    if UNIT == 0:
        sn = 1
    if UNIT == 1:
        sc = 1
    if UNIT == 2:
        sd = 1
    if UNIT == 3:
        sh = 1
    if UNIT == 4:
        sw = 1
    return sn, sc, sd, sh, sw
