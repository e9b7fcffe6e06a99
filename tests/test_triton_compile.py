"""The Triton kernels compile for real GPUs, without a GPU: every kernel family through
``triton.compile`` for sm_80 and sm_90 (Triton ships ptxas and cuobjdump) with the arguments the
launcher passes for real layers, specialized as Triton's launch specializes them (integers equal
to 1 are constants), with no register spills, within the architecture's shared memory, and with
the matrix instructions the design promises (``tests/test_triton_sass.py`` reads the rest of
the code).

CI runs a quick spread (the channel-poor kernels at 1, 2 and 8 channels among it, and every
candidate of the one-output-channel weight gradient on sm_80 and sm_90);
``UNSHARED_FULL_COMPILE=1`` runs every tensor-core candidate x dtype x weight layout x banks x
architecture, and every candidate the launcher can pick for channel-poor layers of 1, 2 and 8
channels (a few hours on two cores). The compiling happens in one subprocess
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

import triton_aot  # noqa: E402  (defines no kernel: those are imported when compiled, in the subprocess)
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


def spills(r: dict) -> bool:
    """Whether a variant touches local memory (register spills, or a local array). A stack frame
    that nothing loads from or stores to is no spill: LLVM reserves one where it legalises a
    bitcast of a vector of masks through a stack slot that it then folds away (the tiled input
    gradient on sm_90, with unit strides as constants)."""
    return bool(r["LOCAL"] or r["sass_local"] or r["ptx_local"])


def test_every_variant_compiles_without_spills_within_shared_memory(compiled):
    assert compiled
    for r in compiled:
        assert "error" not in r, f"{describe(r)}: {r.get('error')}"
        assert not spills(r), f"{describe(r)}: register spills ({r})"
        assert r["shared_bytes"] <= SHARED_LIMIT[r["arch"]], f"{describe(r)}: {r['shared_bytes']} B of shared memory"


def test_the_one_output_channel_weight_gradient_does_not_spill_on_sm80_or_sm90(compiled):
    # one-hot DNA to one output channel (4 -> 1, kernel 10): the channel-poor weight gradient's
    # longest tile, (positions, 32 reduction indices) gathers per sample. It spilled up to 232 B per
    # thread on sm_80 and 392 B on sm_90 while program ids were int64 (ptxas makes their divisions
    # subroutine calls); every candidate of it, on both architectures, in the quick spread too
    expected = {str(c) for c in configs.small_candidates("weight_grad", 1, 40)}
    found = [r for r in compiled if r["shape"] == "genomics-4-1" and r["op"] == "weight_grad" and r["small"]]
    assert {(r["candidate"], r["arch"]) for r in found} >= {(c, arch) for c in expected for arch in (80, 90)}
    for r in found:
        assert not spills(r), f"{describe(r)}: register spills ({r})"


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
    families = {(r["kernel"], r["small"]) for r in compiled}
    assert families == {(c.kernel, small) for cs in configs.TENSOR_CORE.values() for c in cs for small in (False, True)}
    assert {r["arch"] for r in compiled} == {80, 90} and {r["kernel_major"] for r in compiled} == {True, False}
    # the channel-poor kernels at 1, 2 and 8 channels on the narrow side, each operation
    small = {(r["op"], r["blocks"].get("BLOCK_C" if r["op"] == "input_grad" else "BLOCK_O")) for r in compiled
             if r["small"]}
    assert small >= {(op, width) for op in ("forward", "input_grad", "weight_grad") for width in (1, 2, 8)}
    if FULL:
        covered = {r["candidate"] for r in compiled}
        assert covered >= {str(c) for cs in configs.TENSOR_CORE.values() for c in cs}
        launcher = {(r["op"], r["shape"], r["candidate"]) for r in compiled}
        assert launcher >= {(op, shape, str(c)) for op in ("forward", "input_grad", "weight_grad")
                            for shape in triton_aot.GENOMICS for c in triton_aot.launcher_candidates(op, shape)}
