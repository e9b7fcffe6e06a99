"""Fused Triton GPU kernels for the locally connected layer (host side: checks, layouts, arguments).

The kernels (:mod:`.kernels`: tensor cores, or CUDA-core FMAs for channel-poor layers) gather
patches on the fly, so neither a patch tensor nor a padded copy of the input is ever made; zero
padding happens in the kernels. float32 uses TF32 when PyTorch allows it for matmuls; float16/bfloat16
are multiplied on tensor cores and summed in float32; float64 stays float64. Which kernel and
tile runs is measured once per key on a GPU and then launched directly (:mod:`.tuning`).

The kernels take any strides; the launcher copies a large operand into the layout its loads
want (:func:`layouts`) and leaves small ones as they are, where a copy would cost more than it
saves; the stride of 1 it leaves is passed as a constant, so that Triton can vectorise along it. Triton is imported only when a kernel is launched. On a machine without a GPU the
kernels run on CPU tensors under ``TRITON_INTERPRET=1`` (slow; for tests on small shapes).
"""
from __future__ import annotations

import contextlib
import importlib.util
import math

import torch

from ..._utils import Geometry, empty_weight, flat_bank_index, memory_format_of, weight_memory
from . import configs, tuning

__all__ = ["can_run", "forward", "input_grad", "weight_grad", "chosen_configs", "TRITON_INSTALLED"]

#: Whether Triton is installed (checked without importing it).
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
OPS = ("forward", "input_grad", "weight_grad")
#: Below this many elements an operand is used in the layout it comes in (a copy costs a launch).
COPY_ELEMENTS = 1 << 16


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _programs(op: str, g: Geometry, n: int, c: configs.Candidate) -> int:
    """Programs of one launch of candidate ``c``."""
    b, cg, og = c.block, g.in_channels // g.groups, g.out_channels // g.groups
    if op == "forward":
        return _cdiv(n, b["BLOCK_N"]) * _cdiv(og, b["BLOCK_O"]) * g.groups * _cdiv(g.positions, b["BLOCK_P"])
    if op == "input_grad":
        return _cdiv(n, b["BLOCK_N"]) * _cdiv(cg, b["BLOCK_C"]) * g.groups * _cdiv(math.prod(g.input_size), b["BLOCK_P"])
    return _cdiv(g.kernel_volume * cg, b["BLOCK_R"]) * _cdiv(og, b["BLOCK_O"]) * g.groups * _cdiv(g.positions, b["BLOCK_P"])


def _options(op: str, g: Geometry) -> tuple[configs.Candidate, ...]:
    narrow = (g.in_channels if op == "input_grad" else g.out_channels) // g.groups
    return configs.candidates(op, narrow, g.kernel_volume * g.in_channels // g.groups)


def can_run(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> str | None:
    """``None`` when the Triton kernels can compute this call, else the reason why not."""
    if not TRITON_INSTALLED:
        return "Triton is not installed (pip install triton; it ships with PyTorch's CUDA wheels)"
    if x.device.type != "cuda" and not (x.device.type == "cpu" and configs.interpreting()):
        return (f"the input is on {x.device.type}: the Triton kernels run on CUDA devices "
                f"(or on the CPU under TRITON_INTERPRET=1, for testing)")
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} is not supported (supported: {', '.join(map(str, DTYPES))})"
    if x.dtype == torch.bfloat16 and x.device.type == "cuda" and torch.cuda.get_device_capability(x.device) < (8, 0):
        return (f"bfloat16 needs a GPU of compute capability 8.0 or newer, {x.device} has "
                f"{torch.cuda.get_device_capability(x.device)}")
    for op in OPS:
        options = (configs.INTERPRETER[op],) if configs.interpreting() else _options(op, g)
        programs = max(_programs(op, g, x.shape[0], c) for c in options)
        if configs.grid(programs)[1] > configs.MAX_GRID_Y:
            return (f"the {op.replace('_', ' ')} would need {programs:,} programs, more than a CUDA grid "
                    f"holds ({configs.MAX_GRID_X:,} x {configs.MAX_GRID_Y:,})")
    return None


def _kernel_of(c: configs.Candidate):
    from . import kernels
    return getattr(kernels, c.kernel)


def chosen_configs() -> dict[str, dict[str, str]]:
    """The configuration chosen per key, and the time of every candidate measured (empty before
    the first launch and under the interpreter), for reports."""
    return {"chosen": tuning.chosen(), "timings": tuning.timings()}


def _spatial3(values, fill: int) -> list[int]:
    """Pad per-dimension values of a 1d/2d layer to three spatial dimensions."""
    return [fill] * (3 - len(values)) + list(values)


def _strides(t: torch.Tensor, name: str) -> dict[str, int]:
    """Strides of an ``(N, C, *spatial)`` tensor as the kernels' ``{name}n, {name}c, {name}d,
    {name}h, {name}w`` arguments (padded spatial dimensions: stride 0)."""
    return dict(zip((name + a for a in "ncdhw"), [t.stride(0), t.stride(1), *_spatial3(t.stride()[2:], 0)]))


def _unit_dim(t: torch.Tensor) -> int:
    """The dimension (of ``n, c, d, h, w``) whose stride is 1 and which is the longest such, or -1:
    the kernels then multiply by a constant 1 there, which lets Triton vectorise along it."""
    sizes = [t.shape[0], t.shape[1], *_spatial3(t.shape[2:], 1)]
    strides = [t.stride(0), t.stride(1), *_spatial3(t.stride()[2:], 0)]
    units = [d for d in range(5) if strides[d] == 1]
    return max(units, key=lambda d: (sizes[d], d)) if units else -1


def _geometry_args(g: Geometry, n: int, positions: int, op: str) -> dict[str, int]:
    (ID, IH, IW), (OD, OH, OW) = _spatial3(g.input_size, 1), _spatial3(g.output_size, 1)
    (KD, KH, KW), (SD, SH, SW) = _spatial3(g.kernel_size, 1), _spatial3(g.stride, 1)
    (PD, PH, PW), (DD, DH, DW) = _spatial3([lo for lo, _ in g.padding], 0), _spatial3(g.dilation, 1)
    cg = g.in_channels // g.groups
    args = dict(N=n, Cg=cg, Og=g.out_channels // g.groups, G=g.groups, R=g.kernel_volume * cg, P=positions,
                ID=ID, IH=IH, IW=IW, OH=OH, OW=OW, KH=KH, KW=KW,
                SD=SD, SH=SH, SW=SW, PD=PD, PH=PH, PW=PW, DD=DD, DH=DH, DW=DW)
    if op == "input_grad":  # the kernel offsets that reach an input position: every STEP-th, J in all
        steps = [s // math.gcd(s, d) for s, d in zip((SD, SH, SW), (DD, DH, DW))]
        counts = [_cdiv(k, step) for k, step in zip((KD, KH, KW), steps)]
        args.update(OD=OD, KD=KD, STEP_D=steps[0], STEP_H=steps[1], STEP_W=steps[2], JH=counts[1], JW=counts[2],
                    J=math.prod(counts))
    return args


def _tf32_allowed() -> bool:
    """PyTorch's TF32 setting for float32 matmuls, by its newer API (``fp32_precision``) when that
    was used (reading ``allow_tf32`` then raises), else by ``allow_tf32``."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", "none")
    if precision != "none":
        return precision == "tf32"
    return bool(matmul.allow_tf32)


def _dtype_args(dtype: torch.dtype, small: bool) -> dict:
    import triton.language as tl

    interpreting = configs.interpreting()
    tf32 = dtype == torch.float32 and not interpreting and not small and _tf32_allowed()
    return dict(UPCAST=dtype == torch.bfloat16 and interpreting, ACC=tl.float64 if dtype == torch.float64 else tl.float32,
                PRECISION="tf32" if tf32 else "ieee", SMALL=small)


def layouts(op: str, small: bool, dtype: torch.dtype, kernel_major: bool) -> dict[str, str]:
    """The layout the kernels of one family read or write each tensor of ``op`` in:
    ``"channels"`` (channel stride 1: the tensor-core tiles are ``(batch, channel)`` blocks at a
    position, and a kernel-major patch runs over channels), ``"batch"`` (batch stride 1: TF32
    products need both operands of the weight gradient contiguous along its reduction, the
    batch) or ``"contiguous"`` (a channel-major patch runs along the last spatial dimension, and
    the channel-poor kernels' slabs along the positions)."""
    if small:
        return dict.fromkeys(("x", "y", "gy", "gx"), "contiguous")
    if op == "forward":
        return dict(x="channels" if kernel_major else "batch", y="channels")
    if op == "input_grad":
        return dict(gy="channels", gx="channels")
    return dict(x="batch", gy="batch")


def arrange(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` ``(N, C, *spatial)`` in ``layout`` (a copy unless it is; none when ``t`` is small, where
    a copy costs more than it saves: the kernels take any strides)."""
    if t.numel() < COPY_ELEMENTS:
        return t
    if layout == "contiguous":
        return t.contiguous()
    dim = 1 if layout == "channels" else 0
    return t if t.stride(dim) == 1 else t.movedim(dim, -1).contiguous().movedim(-1, dim)


def empty_output(shape, like: torch.Tensor, layout: str, fmt: torch.memory_format) -> torch.Tensor:
    """An uninitialised ``(N, C, *spatial)`` output in ``layout`` (``"channels"``: channel stride 1,
    when large), else in the final format ``fmt``."""
    n, c, *spatial = shape
    if layout == "channels" and math.prod(shape) >= COPY_ELEMENTS:
        return torch.empty((n, *spatial, c), dtype=like.dtype, device=like.device).movedim(-1, 1)
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


_NO_BANKS: dict = {}


def _bank_args(g: Geometry, device) -> dict:
    """The bank index pointer (a one-element placeholder without banks) and the ``HAS_BANKS`` flag."""
    banks = flat_bank_index(g, device)
    if banks is None:
        key = torch.device(device)
        banks = _NO_BANKS.get(key)
        if banks is None or torch.compiler.is_compiling():
            banks = torch.zeros(1, dtype=torch.int64, device=device)
            _NO_BANKS[key] = banks
        return dict(bank_ptr=banks, HAS_BANKS=False)
    return dict(bank_ptr=banks, HAS_BANKS=True)


def _key(op: str, g: Geometry, n: int, dtype: torch.dtype, kernel_major: bool, device) -> tuple:
    precision = "tf32" if dtype == torch.float32 and _tf32_allowed() else "ieee"
    return (op, tuple(g.encode()), configs.bucket(n), dtype, kernel_major, precision, str(device))


def arguments(op: str, g: Geometry, n: int, dtype, kernel_major: bool, device, tensors: dict,
              c: configs.Candidate) -> dict:
    """Every argument of candidate ``c``'s kernel by name, constexprs included: ``tensors`` are the
    ``*_ptr`` tensors (the bank index is added here); their strides, the geometry and the flags."""
    strides = {}
    for name, prefix in (("x_ptr", "sx"), ("y_ptr", "sy"), ("gy_ptr", "sg"), ("gx_ptr", "sx")):
        if name in tensors:
            strides.update(_strides(tensors[name], prefix))
            strides[prefix.upper() + "_UNIT"] = _unit_dim(tensors[name])
    positions = math.prod(g.input_size) if op == "input_grad" else g.positions
    return dict(_geometry_args(g, n, positions, op), **_bank_args(g, device), **tensors, **strides,
                KERNEL_MAJOR=kernel_major, INDEX64=_index64(*tensors.values()), BLOCKS64=_blocks64(op, g, n, c),
                **_dtype_args(dtype, c.small), **c.block)


def _launch(op: str, g: Geometry, n: int, dtype, kernel_major: bool, device, prepare, reset=None):
    """Launch ``op``; ``prepare(layouts)`` returns ``(the *_ptr tensors by name, the output)`` in
    those layouts (called at most once per kernel family). Returns the output written."""
    prepared: dict[bool, tuple[dict, torch.Tensor]] = {}
    used: list[bool] = []

    def args(c: configs.Candidate) -> dict:
        if c.small not in prepared:
            prepared[c.small] = prepare(layouts(op, c.small, dtype, kernel_major))
        used[:] = [c.small]
        return arguments(op, g, n, dtype, kernel_major, device, prepared[c.small][0], c)

    options = (configs.INTERPRETER[op],) if configs.interpreting() else _options(op, g)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        tuning.launch(op, _key(op, g, n, dtype, kernel_major, device), options, _kernel_of, args,
                      lambda c: configs.grid(_programs(op, g, n, c)), reset)
    return prepared[used[0]][1]


def _index64(*tensors: torch.Tensor) -> bool:
    """Whether an element offset of one of the tensors reaches 2^31 (the kernels then index in int64)."""
    return any(sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) >= 2**31 - 1
               for t in tensors if t.numel())


def _blocks64(op: str, g: Geometry, n: int, c: configs.Candidate) -> bool:
    """Whether a program id, or an index in a block (a size and its last block's excess), reaches
    2^31: the kernels then compute them in int64, else in int32, which needs no 64-bit division
    (ptxas makes those subroutine calls, around which it spilled the channel-poor kernels)."""
    sizes = (n, g.in_channels, g.out_channels, g.kernel_volume * g.in_channels, math.prod(g.input_size), g.positions)
    return max(max(sizes) + max(c.block.values()), _programs(op, g, n, c)) >= 2**31 - 1


def _apply_weight(op: str, source: torch.Tensor, w: torch.Tensor, g: Geometry, shape, fmt: torch.memory_format,
                  source_name: str, out_name: str) -> torch.Tensor:
    """Launch ``op`` (the forward or the input gradient) on ``source`` and the weight ``w``, into an
    output of ``shape`` returned in ``fmt``; the names are the tensors' in the layouts (``x`` and
    ``y``, or ``gy`` and ``gx``)."""
    n = source.shape[0]
    if n == 0:
        return torch.empty(shape, dtype=source.dtype, device=source.device, memory_format=fmt)
    matrix, kernel_major = weight_memory(w)

    def prepare(layout):
        out = empty_output(shape, source, layout[out_name], fmt)
        tensors = {f"{source_name}_ptr": arrange(source, layout[source_name]), "w_ptr": matrix, f"{out_name}_ptr": out}
        return tensors, out

    out = _launch(op, g, n, source.dtype, kernel_major, source.device, prepare)
    return out.contiguous(memory_format=fmt)


def forward(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> torch.Tensor:
    """``(N, C, *input_size)`` -> ``(N, O, *output_size)`` in the input's memory format."""
    shape = (x.shape[0], g.out_channels, *g.output_size)
    return _apply_weight("forward", x, w, g, shape, memory_format_of(x), "x", "y")


def input_grad(gy: torch.Tensor, w: torch.Tensor, g: Geometry,
               memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``(N, O, *output_size)`` -> ``(N, C, *input_size)`` in ``memory_format``."""
    shape = (gy.shape[0], g.in_channels, *g.input_size)
    return _apply_weight("input_grad", gy, w, g, shape, memory_format, "gy", "gx")


def weight_grad(x: torch.Tensor, gy: torch.Tensor, g: Geometry, kernel_major: bool = True) -> torch.Tensor:
    """Public-shaped weight gradient, kernel-major or channel-major; with banks the positions of
    each bank are summed (atomically, in float32 or float64)."""
    n = x.shape[0]
    shape = (*g.weight_leading, g.out_channels, g.in_channels // g.groups, *g.kernel_size)
    gw = empty_weight(shape, g.ndim, kernel_major=kernel_major, dtype=x.dtype, device=x.device)
    if n == 0:
        return gw.zero_()
    gws, kernel_major = weight_memory(gw)  # a view of gw's memory
    target = gws
    if g.banks is not None:
        target = torch.zeros(gws.shape, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                             device=x.device)

    def prepare(layout):
        return dict(x_ptr=arrange(x, layout["x"]), gy_ptr=arrange(gy, layout["gy"]), gw_ptr=target), target

    _launch("weight_grad", g, n, x.dtype, kernel_major, x.device, prepare,
            reset=target.zero_ if g.banks is not None else None)
    if target is not gws:
        gws.copy_(target)
    return gw
