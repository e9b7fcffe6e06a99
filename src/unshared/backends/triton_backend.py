"""Fused Triton GPU kernels for the locally connected layer (host side: checks, allocation, launch).

The kernels (:mod:`unshared.backends._triton_kernels`) gather patches on the fly, so neither a
patch tensor nor a padded copy of the input is ever made; zero padding happens in the kernels.
float32 uses TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is set; float16/bfloat16 are
multiplied on tensor cores and summed in float32; float64 stays float64.

Triton is imported only when a kernel is launched. On a machine without a GPU the kernels run on
CPU tensors under ``TRITON_INTERPRET=1`` (slow; for tests on small shapes).
"""
from __future__ import annotations

import importlib.util
import math
import os

import torch

from .._utils import Geometry, empty_weight, memory_format_of, weight_memory

#: Whether Triton is installed (checked without importing it).
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def can_run(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> str | None:
    """``None`` when the Triton kernels can compute this call, else the reason why not."""
    if not TRITON_INSTALLED:
        return "Triton is not installed (pip install triton; it ships with PyTorch's CUDA wheels)"
    if x.device.type != "cuda" and not (x.device.type == "cpu" and _interpreting()):
        return (f"the input is on {x.device.type}: the Triton kernels run on CUDA devices "
                f"(or on the CPU under TRITON_INTERPRET=1, for testing)")
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} is not supported (supported: {', '.join(map(str, DTYPES))})"
    if x.dtype == torch.bfloat16 and x.device.type == "cuda" and torch.cuda.get_device_capability(x.device) < (8, 0):
        return (f"bfloat16 needs a GPU of compute capability 8.0 or newer, {x.device} has "
                f"{torch.cuda.get_device_capability(x.device)}")
    return None


def _kernels():
    from . import _triton_kernels
    return _triton_kernels


def _spatial3(values, fill: int) -> list[int]:
    """Pad per-dimension values of a 1d/2d layer to three spatial dimensions."""
    return [fill] * (3 - len(values)) + list(values)


def _strides(t: torch.Tensor, name: str) -> dict[str, int]:
    """Strides of an ``(N, C, *spatial)`` tensor as the kernels' ``{name}n, {name}c, {name}d,
    {name}h, {name}w`` arguments (padded spatial dimensions: stride 0)."""
    return dict(zip((name + a for a in "ncdhw"), [t.stride(0), t.stride(1), *_spatial3(t.stride()[2:], 0)]))


def _geometry_args(g: Geometry, *unused: str) -> dict[str, int]:
    (ID, IH, IW), (OD, OH, OW) = _spatial3(g.input_size, 1), _spatial3(g.output_size, 1)
    (KD, KH, KW), (SD, SH, SW) = _spatial3(g.kernel_size, 1), _spatial3(g.stride, 1)
    (PD, PH, PW), (DD, DH, DW) = _spatial3([lo for lo, _ in g.padding], 0), _spatial3(g.dilation, 1)
    cg = g.in_channels // g.groups
    args = dict(Cg=cg, Og=g.out_channels // g.groups, G=g.groups, R=g.kernel_volume * cg,
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

    if dtype == torch.float32:
        precision = "tf32" if not _interpreting() and _tf32_allowed() else "ieee"
    else:
        precision = "ieee"
    return dict(UPCAST=dtype == torch.bfloat16 and _interpreting(), PRECISION=precision,
                ACC=tl.float64 if dtype == torch.float64 else tl.float32)


def _launch(kernel, programs, *args, **kwargs):
    """Launch over a 1-d grid of ``programs(blocks)`` programs on the device of the first tensor
    argument (Triton launches on the current device); block sizes come from the autotuner on a
    GPU and are fixed under the interpreter."""
    k = _kernels()
    if k.INTERPRET:
        kernel[(programs(k.INTERPRETER_BLOCKS),)](*args, **kwargs, **k.INTERPRETER_BLOCKS)
        return
    with torch.cuda.device(args[0].device):
        kernel[lambda meta: (programs(meta),)](*args, **kwargs)


def _patch_source(x: torch.Tensor, kernel_major: bool) -> torch.Tensor:
    """``x`` laid out so that consecutive reduction indices of a patch are consecutive addresses
    (coalesced loads, for dilation 1): channel stride 1 for a kernel-major weight (whose patches
    run over channels), plain contiguous for a channel-major one (runs along the last spatial
    dimension). At most one copy of the input, small next to the weight."""
    if kernel_major:
        return x if x.stride(1) == 1 else x.movedim(1, -1).contiguous().movedim(-1, 1)
    return x.contiguous()


def _no_bank(banks, device):
    """The bank pointer argument: the index, or any valid pointer when there are no banks."""
    return banks if banks is not None else torch.empty(1, dtype=torch.int64, device=device)


def forward(x: torch.Tensor, w: torch.Tensor, g: Geometry, banks: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, C, *input_size)`` -> ``(N, O, *output_size)`` in the input's memory format."""
    n = x.shape[0]
    y = torch.empty((n, g.out_channels, *g.output_size), dtype=x.dtype, device=x.device,
                    memory_format=memory_format_of(x))
    if n == 0:
        return y
    geo = _geometry_args(g, "OD", "KD")
    matrix, kernel_major = weight_memory(w)
    x = _patch_source(x, kernel_major)
    _launch(_kernels().forward_kernel,
            lambda b: math.ceil(n / b["BLOCK_N"]) * math.ceil(geo["Og"] / b["BLOCK_O"]) * g.groups * g.positions,
            x, matrix, _no_bank(banks, x.device), y, N=n, **geo, **_strides(x, "sx"), **_strides(y, "sy"),
            HAS_BANKS=banks is not None, KERNEL_MAJOR=kernel_major, **_dtype_args(x.dtype))
    return y


def input_grad(gy: torch.Tensor, w: torch.Tensor, g: Geometry,
               memory_format: torch.memory_format = torch.contiguous_format,
               banks: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, O, *output_size)`` -> ``(N, C, *input_size)`` in ``memory_format``."""
    n = gy.shape[0]
    gx = torch.empty((n, g.in_channels, *g.input_size), dtype=gy.dtype, device=gy.device,
                     memory_format=memory_format)
    if n == 0:
        return gx
    geo = _geometry_args(g)
    inputs = math.prod(g.input_size)
    matrix, kernel_major = weight_memory(w)
    _launch(_kernels().input_grad_kernel,
            lambda b: math.ceil(n / b["BLOCK_N"]) * math.ceil(geo["Cg"] / b["BLOCK_C"]) * g.groups * inputs,
            gy, matrix, _no_bank(banks, gy.device), gx, N=n, **geo, **_strides(gy, "sg"), **_strides(gx, "sx"),
            HAS_BANKS=banks is not None, KERNEL_MAJOR=kernel_major, **_dtype_args(gy.dtype))
    return gx


def weight_grad(x: torch.Tensor, gy: torch.Tensor, g: Geometry, banks: torch.Tensor | None = None,
                kernel_major: bool = True) -> torch.Tensor:
    """Public-shaped weight gradient, kernel-major or channel-major; with ``banks`` the positions
    of each bank are summed (atomically, in float32 or float64)."""
    n = x.shape[0]
    shape = (*g.weight_leading, g.out_channels, g.in_channels // g.groups, *g.kernel_size)
    gw = empty_weight(shape, g.ndim, kernel_major=kernel_major, dtype=x.dtype, device=x.device)
    if n == 0:
        return gw.zero_()
    gws, kernel_major = weight_memory(gw)  # a view of gw's memory
    target = gws
    if banks is not None:
        target = torch.zeros(gws.shape, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                             device=x.device)
    geo = _geometry_args(g, "OD", "KD")
    x = _patch_source(x, kernel_major)
    _launch(_kernels().weight_grad_kernel,
            lambda b: math.ceil(geo["R"] / b["BLOCK_R"]) * math.ceil(geo["Og"] / b["BLOCK_O"]) * g.groups * g.positions,
            x, gy, _no_bank(banks, x.device), target, N=n, **geo, **_strides(x, "sx"), **_strides(gy, "sg"),
            HAS_BANKS=banks is not None, KERNEL_MAJOR=kernel_major, **_dtype_args(x.dtype))
    if target is not gws:
        gws.copy_(target)
    return gw
