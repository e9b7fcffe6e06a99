"""The Triton kernels compile for real GPUs, without a GPU: every kernel family through
``triton.compile`` for sm_80 and sm_90 (Triton ships ptxas and cuobjdump) with the arguments the
launcher passes for real layers, with no register spills, within the architecture's shared
memory, and with the matrix instructions the design promises (``tests/test_triton_sass.py``
reads the rest of the code).

CI runs a quick spread; ``UNSHARED_FULL_COMPILE=1`` runs every candidate x dtype x weight layout
x banks x architecture (tens of minutes). The compiling happens in one subprocess
(``tests/triton_aot.py``), where the kernels are defined without the interpreter.
"""
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton is not installed")

from unshared.backends.triton import configs  # noqa: E402

FULL = os.environ.get("UNSHARED_FULL_COMPILE", "") not in ("", "0")
#: shared memory one block may use (the opt-in maximum), bytes
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
SCRIPT = Path(__file__).with_name("triton_aot.py")


@functools.cache
def compile_all() -> tuple[dict, ...]:
    """Every variant's record (one subprocess per test session)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(SCRIPT), *(["--full"] if FULL else [])], capture_output=True,
                         text=True, env=env, timeout=7200)
    assert out.returncode == 0, out.stderr[-4000:]
    return tuple(json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))


def describe(r: dict) -> str:
    return (f"{r['candidate']} {r['dtype']} {r['shape']} kernel_major={r['kernel_major']} banks={r['banks']} "
            f"sm_{r['arch']}")


@pytest.fixture(scope="module")
def compiled():
    return compile_all()


def test_every_variant_compiles_without_spills_within_shared_memory(compiled):
    assert compiled
    for r in compiled:
        assert "error" not in r, f"{describe(r)}: {r.get('error')}"
        assert r["LOCAL"] == 0 and r["STACK"] == 0 and r["sass_local"] == 0, f"{describe(r)}: register spills ({r})"
        assert r["shared_bytes"] <= SHARED_LIMIT[r["arch"]], f"{describe(r)}: {r['shared_bytes']} B of shared memory"


def test_one_position_tiles_use_wgmma_on_sm90_and_tiles_of_positions_mma(compiled):
    # BLOCK_P = 1 is a 2-d product: with M (the batch tile; the weight gradient's reduction tile)
    # of 64 or more and whole warpgroups, Hopper's wgmma (HGMMA in the SASS). Several positions are
    # a batched product: mma.sync (HMMA). The channel-poor kernels use no tensor cores at all.
    tensor_cores = [r for r in compiled if not r["small"] and r["dtype"] != "float64"]
    single = [r for r in tensor_cores if r["arch"] == 90 and r["blocks"]["BLOCK_P"] == 1 and r["warps"] % 4 == 0
              and r["blocks"]["BLOCK_R" if r["op"] == "weight_grad" else "BLOCK_N"] >= 64]
    tiled = [r for r in tensor_cores if r["blocks"]["BLOCK_P"] > 1]
    assert single and tiled
    for r in single:
        assert r["wgmma"] and r["sass_hgmma"], f"{describe(r)}: no wgmma"
    for r in tiled:
        assert r["mma_sync"] and r["sass_hmma"] and not r["wgmma"], f"{describe(r)}: no mma.sync"
    for r in compiled:
        if r["small"]:
            assert not (r["wgmma"] or r["mma_sync"] or r["sass_hmma"] or r["sass_hgmma"]), describe(r)


def test_the_sweep_covers_every_kernel_family(compiled):
    kernels = {r["kernel"] for r in compiled}
    assert kernels == {c.kernel for cs in configs.TENSOR_CORE.values() for c in cs} | {
        "forward_small_kernel", "input_grad_small_kernel", "weight_grad_small_kernel"}
    assert {r["arch"] for r in compiled} == {80, 90} and {r["kernel_major"] for r in compiled} == {True, False}
    if FULL:
        covered = {r["candidate"] for r in compiled}
        assert covered >= {str(c) for cs in configs.TENSOR_CORE.values() for c in cs}
