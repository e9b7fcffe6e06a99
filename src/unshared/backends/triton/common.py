"""The ``@triton.jit`` helpers that the tensor-core kernels (:mod:`.kernels`) and the channel-poor
kernels (:mod:`.small`) share: program decomposition, position and patch arithmetic, filter banks,
the matrix product and the output rounding. This module imports Triton."""
import triton
import triton.language as tl


@triton.jit
def program(inner_blocks, channel_blocks, G, tiles):
    """This program's ``(inner block, group, channel block, tile, valid)``: the inner block varies
    fastest, then the channel block, the group, and the position tile. ``valid`` is false for
    the excess programs of the last grid row, which return at once."""
    pid = tl.program_id(0).to(tl.int64) + tl.program_id(1).to(tl.int64) * tl.num_programs(0)
    total = (pid * 0 + inner_blocks) * channel_blocks * G * tiles  # int64, even for constexpr sizes
    valid = pid < total
    rest = pid // inner_blocks
    return (pid % inner_blocks, (rest % (channel_blocks * G)) // channel_blocks, rest % channel_blocks,
            rest // (channel_blocks * G), valid)


@triton.jit
def position(p, OH, OW):
    """Flat (int64) positions -> their (d, h, w) coordinates, int32."""
    return (p // (OH * OW)).to(tl.int32), ((p // OW) % OH).to(tl.int32), (p % OW).to(tl.int32)


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
def patch_offsets(r, R, Cg, KH, KW, pd, ph, pw, SD, SH, SW, PD, PH, PW, DD, DH, DW, ID, IH, IW,
                  sxc, sxd, sxh, sxw, channel0, KERNEL_MAJOR: tl.constexpr, INDEX64: tl.constexpr):
    """For reduction indices ``r`` of output positions ``(pd, ph, pw)`` (broadcast against each
    other): the input offsets (without the batch term) and which lie inside the unpadded input."""
    k, c = split_reduction(r, Cg, R // Cg, KERNEL_MAJOR)
    c = channel0 + c
    i_d = pd * SD + (k // (KH * KW)) * DD - PD
    i_h = ph * SH + ((k // KW) % KH) * DH - PH
    i_w = pw * SW + (k % KW) * DW - PW
    inside = (r < R) & (i_d >= 0) & (i_d < ID) & (i_h >= 0) & (i_h < IH) & (i_w >= 0) & (i_w < IW)
    offsets = (wide(c, INDEX64) * sxc + wide(i_d, INDEX64) * sxd + wide(i_h, INDEX64) * sxh
               + wide(i_w, INDEX64) * sxw)
    return offsets, inside


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
