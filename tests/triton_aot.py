"""Compile the Triton kernels ahead of time for a GPU target, without a GPU (a helper of
``tests/test_triton_compile.py``, run in a subprocess so that ``TRITON_INTERPRET`` is unset when
the kernels are defined). Prints one JSON line per variant::

    python tests/triton_aot.py [--full]
"""
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout without install

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from unshared.backends.triton import configs, kernels  # noqa: E402

KERNELS = {"forward": "forward_kernel", "input_grad": "input_grad_kernel", "weight_grad": "weight_grad_kernel"}
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_kernel(name, config, dtype, kernel_major, banks, arch):
    """``triton.compile`` one kernel variant for ``sm_{arch}``; returns the compiled kernel."""
    import triton.language as tl

    fn = getattr(kernels, KERNELS[name])
    fn = getattr(fn, "fn", fn)  # the JIT function under the autotuner
    element = DTYPES[dtype]
    signature = {}
    for index, arg in enumerate(fn.arg_names):
        if fn.params[index].is_constexpr:
            signature[arg] = "constexpr"
        elif arg == "bank_ptr":
            signature[arg] = "*i64"
        elif arg == "gw_ptr" and banks:  # the banks' accumulator
            signature[arg] = "*fp64" if dtype == "float64" else "*fp32"
        elif arg.endswith("_ptr"):
            signature[arg] = f"*{element}"
        else:
            signature[arg] = "i32"
    blocks = dict(zip(("BLOCK_N", "BLOCK_O", "BLOCK_R", "BLOCK_C"), config[:4]))
    constexprs = dict(HAS_BANKS=banks, KERNEL_MAJOR=kernel_major, UPCAST=False,
                      PRECISION="tf32" if dtype == "float32" else "ieee",
                      ACC=tl.float64 if dtype == "float64" else tl.float32, **blocks)
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=config[4], num_stages=config[5]))


def resource_usage(compiled) -> dict[str, int]:
    """``REG``, ``STACK``, ``SHARED``, ``LOCAL`` of the kernel, read off its cubin by cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out)}


def matrix_m(name, config) -> int:
    """The M dimension of the kernel's ``tl.dot`` (the batch tile, or the reduction tile of the
    transposed weight gradient)."""
    return config[2] if name == "weight_grad" else config[0]


def variants(full: bool):
    """(kernel, config index, dtype, kernel_major, banks, arch) to compile."""
    if full:
        for name in KERNELS:
            for index in range(len(configs.CONFIGS[name])):
                for dtype, kernel_major, banks, arch in itertools.product(
                        ("float32", "float16", "bfloat16"), (True, False), (False, True), (80, 90)):
                    yield name, index, dtype, kernel_major, banks, arch
            yield name, 0, "float64", True, False, 90
        return
    for name in KERNELS:
        count = len(configs.CONFIGS[name])
        largest = max(range(count), key=lambda i: configs.CONFIGS[name][i][0] * configs.CONFIGS[name][i][2])
        yield name, 0, "bfloat16", True, False, 90
        yield name, largest, "float32", True, True, 90      # the biggest tile, TF32, banks
        yield name, largest, "bfloat16", False, False, 80   # channel-major on Ampere
        yield name, 0, "float64", True, False, 90


def main(full: bool) -> None:
    for name, index, dtype, kernel_major, banks, arch in variants(full):
        config = configs.CONFIGS[name][index]
        record = dict(kernel=name, config=list(config), dtype=dtype, kernel_major=kernel_major, banks=banks,
                      arch=arch, m=matrix_m(name, config))
        try:
            compiled = compile_kernel(name, config, dtype, kernel_major, banks, arch)
            record.update(resource_usage(compiled), shared_bytes=compiled.metadata.shared,
                          wgmma="wgmma" in compiled.asm["ptx"])
        except Exception as error:  # reported, and failed by the test
            record["error"] = f"{type(error).__name__}: {error}"[:2000]
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main("--full" in sys.argv[1:])
