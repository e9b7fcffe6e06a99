"""Fused Triton GPU kernels for the locally connected layer (host side: checks, allocation, launch).

The kernels (:mod:`unshared.backends.triton.kernels`) gather patches on the fly, so neither a
patch tensor nor a padded copy of the input is ever made; zero padding happens in the kernels.
float32 uses TF32 when PyTorch allows it for matmuls; float16/bfloat16 are multiplied on tensor
cores and summed in float32; float64 stays float64.

Triton is imported only when a kernel is launched. On a machine without a GPU the kernels run on
CPU tensors under ``TRITON_INTERPRET=1`` (slow; for tests on small shapes).
"""
from __future__ import annotations

import importlib.util
import math

import torch

from ..._utils import Geometry, empty_weight, flat_bank_index, memory_format_of, weight_memory
from . import configs

__all__ = ["can_run", "forward", "input_grad", "weight_grad", "chosen_configs", "TRITON_INSTALLED"]

#: Whether Triton is installed (checked without importing it).
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_KERNEL_OF = {"forward": "forward_kernel", "input_grad": "input_grad_kernel", "weight_grad": "weight_grad_kernel"}


def _programs(g: Geometry, n: int, kernel: str, blocks: dict[str, int]) -> int:
    """Programs of one launch with the given block sizes."""
    cg, og = g.in_channels // g.groups, g.out_channels // g.groups
    if kernel == "forward":
        return -(-n // blocks["BLOCK_N"]) * -(-og // blocks["BLOCK_O"]) * g.groups * g.positions
    if kernel == "input_grad":
        return -(-n // blocks["BLOCK_N"]) * -(-cg // blocks["BLOCK_C"]) * g.groups * math.prod(g.input_size)
    return -(-g.kernel_volume * cg // blocks["BLOCK_R"]) * -(-og // blocks["BLOCK_O"]) * g.groups * g.positions


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
    for kernel in _KERNEL_OF:
        blocks = configs.INTERPRETER_BLOCKS if configs.interpreting() else configs.smallest_blocks(kernel)
        programs = _programs(g, x.shape[0], kernel, blocks)
        if configs.grid(programs)[1] > configs.MAX_GRID_Y:
            return (f"the {kernel.replace('_', ' ')} would need {programs:,} programs, more than a CUDA grid "
                    f"holds ({configs.MAX_GRID_X:,} x {configs.MAX_GRID_Y:,})")
    return None


def _kernels():
    from . import kernels
    return kernels


def chosen_configs() -> dict[str, dict[str, str]]:
    """The configuration the autotuner chose per kernel and key (empty before the first launch
    and under the interpreter), for reports."""
    if not TRITON_INSTALLED or configs.interpreting():
        return {}
    k = _kernels()
    return {name: {str(key): str(config) for key, config in getattr(k, attr).cache.items()}
            for name, attr in _KERNEL_OF.items()}


def _spatial3(values, fill: int) -> list[int]:
    """Pad per-dimension values of a 1d/2d layer to three spatial dimensions."""
    return [fill] * (3 - len(values)) + list(values)


def _strides(t: torch.Tensor, name: str) -> dict[str, int]:
    """Strides of an ``(N, C, *spatial)`` tensor as the kernels' ``{name}n, {name}c, {name}d,
    {name}h, {name}w`` arguments (padded spatial dimensions: stride 0)."""
    return dict(zip((name + a for a in "ncdhw"), [t.stride(0), t.stride(1), *_spatial3(t.stride()[2:], 0)]))


def _geometry_args(g: Geometry, n: int, positions: int, *unused: str) -> dict[str, int]:
    (ID, IH, IW), (OD, OH, OW) = _spatial3(g.input_size, 1), _spatial3(g.output_size, 1)
    (KD, KH, KW), (SD, SH, SW) = _spatial3(g.kernel_size, 1), _spatial3(g.stride, 1)
    (PD, PH, PW), (DD, DH, DW) = _spatial3([lo for lo, _ in g.padding], 0), _spatial3(g.dilation, 1)
    cg = g.in_channels // g.groups
    args = dict(N=n, Cg=cg, Og=g.out_channels // g.groups, G=g.groups, R=g.kernel_volume * cg,
                P=positions, N_BUCKET=configs.bucket(n), P_BUCKET=configs.bucket(positions),
                ID=ID, IH=IH, IW=IW, OD=OD, OH=OH, OW=OW, KD=KD, KH=KH, KW=KW,
                SD=SD, SH=SH, SW=SW, PD=PD, PH=PH, PW=PW, DD=DD, DH=DH, DW=DW)
    return {k: v for k, v in args.items() if k not in unused}


def _tf32_allowed() -> bool:
    """PyTorch's TF32 setting for float32 matmuls, by its newer API (``fp32_precision``) when that
    was used (reading ``allow_tf32`` then raises), else by ``allow_tf32``."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", "none")
    if precision != "none":
        return precision == "tf32"
    return bool(matmul.allow_tf32)


def _dtype_args(dtype: torch.dtype) -> dict:
    import triton.language as tl

    interpreting = configs.interpreting()
    precision = "tf32" if dtype == torch.float32 and not interpreting and _tf32_allowed() else "ieee"
    return dict(UPCAST=dtype == torch.bfloat16 and interpreting, PRECISION=precision,
                ACC=tl.float64 if dtype == torch.float64 else tl.float32)


def _launch(kernel_name: str, g: Geometry, n: int, *args, **kwargs):
    """Launch ``kernel_name`` on the device of the first tensor argument (Triton launches on the
    current device), on a 2-d grid; block sizes come from the autotuner on a GPU and are fixed
    under the interpreter."""
    kernel = getattr(_kernels(), _KERNEL_OF[kernel_name])
    if configs.interpreting():
        kernel[configs.grid(_programs(g, n, kernel_name, configs.INTERPRETER_BLOCKS))](
            *args, **kwargs, **configs.INTERPRETER_BLOCKS)
        return
    with torch.cuda.device(args[0].device):
        kernel[lambda meta: configs.grid(_programs(g, n, kernel_name, meta))](*args, **kwargs)


def _patch_source(x: torch.Tensor, kernel_major: bool) -> torch.Tensor:
    """``x`` laid out so that consecutive reduction indices of a patch are consecutive addresses
    (coalesced loads, for dilation 1): channel stride 1 for a kernel-major weight (whose patches
    run over channels), plain contiguous for a channel-major one (runs along the last spatial
    dimension). At most one copy of the input, small next to the weight."""
    if kernel_major:
        return x if x.stride(1) == 1 else x.movedim(1, -1).contiguous().movedim(-1, 1)
    return x.contiguous()


def _channels_inner(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``(N, C, *spatial)`` with channel stride 1 (a copy unless it has it): a tile of a
    ``(batch, channel)`` block at one position is then a run of contiguous channels per sample,
    not one memory sector per element (the kernels read and write such tiles)."""
    return t if t.stride(1) == 1 else t.movedim(1, -1).contiguous().movedim(-1, 1)


def _batch_inner(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``(N, C, *spatial)`` with batch stride 1 (a copy): the weight gradient's reduction runs
    over the batch, and TF32 tensor cores (wgmma) need both operands contiguous along it."""
    return t if t.stride(0) == 1 else t.movedim(0, -1).contiguous().movedim(-1, 0)


def _empty_channels_inner(shape, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``(N, C, *spatial)`` tensor whose channel stride is 1."""
    n, c, *spatial = shape
    return torch.empty((n, *spatial, c), dtype=like.dtype, device=like.device).movedim(-1, 1)


def _index64(*tensors: torch.Tensor) -> bool:
    """Whether an element offset of one of the tensors reaches 2^31 (the kernels then index in int64)."""
    return any(sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) >= 2**31 - 1
               for t in tensors if t.numel())


def _bank_args(g: Geometry, device) -> dict:
    """The bank index pointer (any valid pointer without banks) and the ``HAS_BANKS`` flag."""
    banks = flat_bank_index(g, device)
    return dict(bank=banks if banks is not None else torch.empty(1, dtype=torch.int64, device=device),
                HAS_BANKS=banks is not None)


def forward(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> torch.Tensor:
    """``(N, C, *input_size)`` -> ``(N, O, *output_size)`` in the input's memory format."""
    n = x.shape[0]
    fmt = memory_format_of(x)
    if n == 0:
        return torch.empty((n, g.out_channels, *g.output_size), dtype=x.dtype, device=x.device, memory_format=fmt)
    y = _empty_channels_inner((n, g.out_channels, *g.output_size), x)
    matrix, kernel_major = weight_memory(w)
    x = _patch_source(x, kernel_major)
    banks = _bank_args(g, x.device)
    _launch("forward", g, n, x, matrix, banks.pop("bank"), y, **_geometry_args(g, n, g.positions, "OD", "KD"),
            **_strides(x, "sx"), **_strides(y, "sy"), **banks, KERNEL_MAJOR=kernel_major, **_dtype_args(x.dtype),
            INDEX64=_index64(x, y, matrix))
    return y.contiguous(memory_format=fmt)


def input_grad(gy: torch.Tensor, w: torch.Tensor, g: Geometry,
               memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``(N, O, *output_size)`` -> ``(N, C, *input_size)`` in ``memory_format``."""
    n = gy.shape[0]
    if n == 0:
        return torch.empty((n, g.in_channels, *g.input_size), dtype=gy.dtype, device=gy.device,
                           memory_format=memory_format)
    gy = _channels_inner(gy)
    gx = _empty_channels_inner((n, g.in_channels, *g.input_size), gy)
    matrix, kernel_major = weight_memory(w)
    banks = _bank_args(g, gy.device)
    _launch("input_grad", g, n, gy, matrix, banks.pop("bank"), gx,
            **_geometry_args(g, n, math.prod(g.input_size)), **_strides(gy, "sg"), **_strides(gx, "sx"),
            **banks, KERNEL_MAJOR=kernel_major, **_dtype_args(gy.dtype), INDEX64=_index64(gy, gx, matrix))
    return gx.contiguous(memory_format=memory_format)


def weight_grad(x: torch.Tensor, gy: torch.Tensor, g: Geometry, kernel_major: bool = True) -> torch.Tensor:
    """Public-shaped weight gradient, kernel-major or channel-major; with banks the positions
    of each bank are summed (atomically, in float32 or float64)."""
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
    if x.dtype == torch.float32 and not configs.interpreting():  # TF32 operands contiguous along the batch
        x, gy = _batch_inner(x), _batch_inner(gy)
    else:
        x, gy = _patch_source(x, kernel_major), _channels_inner(gy)
    banks = _bank_args(g, x.device)
    _launch("weight_grad", g, n, x, gy, banks.pop("bank"), target, **_geometry_args(g, n, g.positions, "OD", "KD"),
            **_strides(x, "sx"), **_strides(gy, "sg"), **banks, KERNEL_MAJOR=kernel_major,
            **_dtype_args(x.dtype), INDEX64=_index64(x, gy, target))
    if target is not gws:
        gws.copy_(target)
    return gw
