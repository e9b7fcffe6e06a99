"""Compile the Triton kernels ahead of time for a GPU target, without a GPU (a helper of
``tests/test_triton_compile.py`` and ``tests/test_triton_sass.py``, run in a subprocess so that
``TRITON_INTERPRET`` is unset when the kernels are defined). Each variant is compiled with the
arguments the launcher passes for a real layer (``SHAPES``: the layouts it chooses, on meta
tensors), specialized by Triton's own launch binder (integers equal to 1 become constants,
integers divisible by 16 and aligned pointers are marked so), so the code is the code a GPU would
run. Prints one JSON line per variant::

    python tests/triton_aot.py [--full]
"""
import itertools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout without install

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from unshared._utils import Geometry, empty_weight, weight_memory  # noqa: E402
from unshared.backends.triton import configs, launch  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _deepface_l4(banks: bool) -> Geometry:
    shared = dict(weight_grid=(11, 11), banks=(tuple(i // 5 for i in range(55)),) * 2) if banks else {}
    return Geometry((63, 63), (55, 55), (9, 9), (1, 1), ((0, 0),) * 2, (1, 1), 1, 16, 16, **shared)


def _genomics(in_channels: int, out_channels: int, length: int = 20000) -> Geometry:
    return Geometry((length,), (length - 9,), (10,), (1,), ((0, 0),), (1,), 1, in_channels, out_channels)


#: The layers compiled for, with their batch: DeepFace L4 at batch 256 (the tensor-core target),
#: channel-poor genomics layers ``genomics-C-O`` (C -> O channels, kernel 10, length 20,000: 1, 2
#: and 8 channels on the narrow side; 4 -> 1 is one-hot DNA to one output channel, whose weight
#: gradient has the longest channel-poor tile), and int64 offsets (a 3d layer whose input passes
#: 2^31 elements, and a genomics layer of length 2^23).
SHAPES = {
    "deepface-l4": (lambda banks: _deepface_l4(banks), 256),
    **{f"genomics-{c}-{o}": (lambda banks, c=c, o=o: _genomics(c, o), 256)
       for c, o in ((1, 1), (4, 1), (2, 2), (8, 8), (4, 8))},
    "huge": (lambda banks: Geometry((128, 128, 128), (126, 126, 126), (3, 3, 3), (1, 1, 1), ((0, 0),) * 3,
                                    (1, 1, 1), 1, 16, 16), 80),
    "huge-genomics-4-1": (lambda banks: _genomics(4, 1, 1 << 23), 256),
}
#: The channel-poor shapes at 1, 2 and 8 channels, where every candidate the launcher can pick is compiled in full.
GENOMICS = ("genomics-1-1", "genomics-4-1", "genomics-2-2", "genomics-8-8")


def launcher_candidates(op: str, shape: str) -> tuple:
    """Every candidate the launcher may pick for ``op`` on ``shape`` (its default first)."""
    make, _ = SHAPES[shape]
    return launch._options(op, make(False))


def tensors(op, g: Geometry, n: int, dtype, kernel_major: bool, small: bool) -> dict:
    """The ``*_ptr`` tensors (meta) that the launcher passes for this call, in its layouts."""
    layout = launch.layouts(op, small, dtype, kernel_major)
    shape_w = (*g.weight_leading, g.out_channels, g.in_channels // g.groups, *g.kernel_size)
    matrix, _ = weight_memory(empty_weight(shape_w, g.ndim, kernel_major=kernel_major, dtype=dtype, device="meta"))
    x = torch.empty((n, g.in_channels, *g.input_size), dtype=dtype, device="meta")
    y = torch.empty((n, g.out_channels, *g.output_size), dtype=dtype, device="meta")
    if op == "forward":
        return dict(x_ptr=launch.arrange(x, layout["x"]), w_ptr=matrix,
                    y_ptr=launch.empty_output(y.shape, y, layout["y"], torch.contiguous_format))
    if op == "input_grad":
        return dict(gy_ptr=launch.arrange(y, layout["gy"]), w_ptr=matrix,
                    gx_ptr=launch.empty_output(x.shape, x, layout["gx"], torch.contiguous_format))
    target = matrix if g.banks is None else torch.empty(matrix.shape, device="meta",
                                                        dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return dict(x_ptr=launch.arrange(x, layout["x"]), gy_ptr=launch.arrange(y, layout["gy"]), gw_ptr=target)


def compile_variant(op, candidate, shape, dtype_name, kernel_major, banks, arch):
    """``triton.compile`` one kernel variant for ``sm_{arch}`` with the launcher's arguments, bound
    and specialized as Triton's launch does (``JITFunction.run``: its binder, then ``_pack_args``)."""
    make, n = SHAPES[shape]
    g, dtype = make(banks), DTYPES[dtype_name]
    torch.backends.cuda.matmul.allow_tf32 = True  # float32 as the benchmarks run it: TF32 products
    named = launch.arguments(op, g, n, dtype, kernel_major, "meta",
                             tensors(op, g, n, dtype, kernel_major, candidate.small), candidate)
    fn = launch._kernel_of(candidate)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    options = dict(num_warps=candidate.num_warps, num_stages=candidate.num_stages)
    # (meta tensors have address 0: aligned, as the launcher's allocations are)
    bound, specialization, rest = create_function_from_signature(fn.signature, fn.params, backend)(**named, **options)
    options, signature, constexprs, attrs = fn._pack_args(backend, options, bound, specialization, rest)
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=target, options=options.__dict__)


def _cuobjdump(compiled, *flags) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([CUOBJDUMP, *flags, f.name], capture_output=True, text=True, check=True).stdout


def features(compiled) -> dict:
    """Resources (``REG``, ``STACK``, ``SHARED``, ``LOCAL``), the local-memory loads and stores
    (``sass_local``, ``ptx_local``: spills, or a local array) and the instructions that the
    design promises, counted in the PTX and the SASS."""
    usage = {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", _cuobjdump(compiled, "-res-usage"))}
    ptx, sass = compiled.asm["ptx"], _cuobjdump(compiled, "-sass")
    widths = Counter()  # bytes per global load instruction (cp.async: its size operand)
    for op, size in re.findall(r"\b(ld\.global[\w.]*|cp\.async\.c[ag]\.shared\.global)\s[^;]*?(?:,\s*(0x\w+))?\s*(?:,\s*%\w+)?;", ptx):
        if size:
            widths[("ca" if ".ca." in op else "cg", int(size, 16))] += 1
        else:
            vector = int(re.search(r"\.v(\d)", op).group(1)) if ".v" in op else 1
            widths[("ld", vector * int(re.search(r"\.[bfus](\d+)$", op).group(1)) // 8)] += 1
    return dict(usage, shared_bytes=compiled.metadata.shared,
                wgmma=ptx.count("wgmma.mma_async"), mma_sync=ptx.count("mma.sync"),
                loads={f"{kind}{size}": count for (kind, size), count in sorted(widths.items())},
                loads16=sum(count for (_, size), count in widths.items() if size == 16),
                ca16=widths[("ca", 16)],
                cvt_rn_bf16=len(re.findall(r"cvt\.rn\.bf16", ptx)), cvt_rz_bf16=len(re.findall(r"cvt\.rz\.bf16", ptx)),
                sass_hgmma=sass.count("HGMMA"), sass_hmma=sass.count("HMMA"),
                sass_ldg128=len(re.findall(r"LDG(?:STS)?\.E[\w.]*\.128", sass)),
                sass_local=len(re.findall(r"\b(?:LDL|STL)\b", sass)),
                ptx_local=len(re.findall(r"\b(?:ld|st)\.local\b", ptx)))


def variants(full: bool):
    """(op, candidate, shape, dtype, kernel_major, banks, arch) to compile: in full, every tensor-core
    candidate x dtype x weight layout x banks x architecture at DeepFace L4, and every candidate the
    launcher can pick for the channel-poor shapes (at 1, 2 and 8 channels) x weight layout x
    architecture (float32 and bfloat16; the channel-poor kernels float16 and float64 too);
    quickly, a spread that still covers every kernel family, both layouts, both architectures,
    banks, int64 offsets, float64, and the channel-poor kernels at 1, 2 and 8 channels (the one
    output channel weight gradient's every candidate on sm_80 and sm_90)."""
    for op in launch.OPS:
        tensor_cores = configs.TENSOR_CORE[op]
        if full:
            for c, dtype, km, banks, arch in itertools.product(tensor_cores, ("float32", "float16", "bfloat16"),
                                                               (True, False), (False, True), (80, 90)):
                yield op, c, "deepface-l4", dtype, km, banks, arch
            for shape, km, arch in itertools.product(GENOMICS, (True, False), (80, 90)):
                for c in launcher_candidates(op, shape):
                    for dtype in ("float32", "bfloat16", *(("float16", "float64") if c.small else ())):
                        yield op, c, shape, dtype, km, False, arch
        else:
            single = next(c for c in tensor_cores if c.block["BLOCK_P"] == 1 and c.num_warps == 4)
            tiled = max(tensor_cores, key=lambda c: (c.block["BLOCK_P"], c.num_warps))
            yield op, single, "deepface-l4", "float32", True, False, 90   # TF32 wgmma, kernel-major
            yield op, single, "deepface-l4", "bfloat16", False, False, 90  # bf16 wgmma, channel-major
            yield op, tiled, "deepface-l4", "bfloat16", True, True, 90     # batched mma.sync, banks
            yield op, tiled, "deepface-l4", "float32", False, False, 80    # Ampere, channel-major
            yield op, tiled, "deepface-l4", "float32", True, False, 90     # batched TF32
            yield op, launcher_candidates(op, "genomics-4-8")[0], "genomics-4-8", "float32", False, False, 90
            yield op, launcher_candidates(op, "genomics-4-8")[0], "genomics-4-8", "bfloat16", True, False, 80
            yield op, launcher_candidates(op, "genomics-1-1")[0], "genomics-1-1", "float32", True, False, 90
            yield op, launcher_candidates(op, "genomics-2-2")[0], "genomics-2-2", "bfloat16", False, False, 80
            yield op, launcher_candidates(op, "genomics-8-8")[1], "genomics-8-8", "float64", True, False, 90
            if op == "weight_grad":  # one output channel: the tile with the most gathers per thread
                for c, arch in itertools.product(launcher_candidates(op, "genomics-4-1")[:2], (80, 90)):
                    yield op, c, "genomics-4-1", "float32", True, False, arch
                yield op, launcher_candidates(op, "genomics-1-1")[0], "genomics-1-1", "float32", False, False, 80
        yield op, tensor_cores[0], "huge", "bfloat16", True, False, 90  # int64 offsets
        yield op, launcher_candidates(op, "huge-genomics-4-1")[0], "huge-genomics-4-1", "float32", True, False, 80
        smallest = min(tensor_cores, key=lambda c: (math.prod(c.block.values()), -c.block["BLOCK_P"]))
        yield op, smallest, "deepface-l4", "float64", True, False, 90


def main(full: bool) -> None:
    for op, candidate, shape, dtype, kernel_major, banks, arch in variants(full):
        record = dict(op=op, candidate=str(candidate), kernel=candidate.kernel, blocks=candidate.block,
                      warps=candidate.num_warps, small=candidate.small, shape=shape, dtype=dtype,
                      kernel_major=kernel_major, banks=banks, arch=arch)
        try:
            record.update(features(compile_variant(op, candidate, shape, dtype, kernel_major, banks, arch)))
        except Exception as error:  # reported, and failed by the test
            record["error"] = f"{type(error).__name__}: {error}"[:2000]
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main("--full" in sys.argv[1:])
