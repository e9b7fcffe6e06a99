"""The Triton kernels compile for real GPUs, without a GPU: every kernel through ``triton.compile``
for sm_80 and sm_90 (Triton ships ptxas and cuobjdump), with no register spills, within the
architecture's shared memory, and with wgmma on sm_90 where the tile allows it.

CI runs a quick subset; ``UNSHARED_FULL_COMPILE=1`` runs every kernel x autotune configuration x
dtype x weight layout x banks x architecture (a few minutes). The compiling happens in one
subprocess (``tests/triton_aot.py``), where the kernels are defined without the interpreter.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton is not installed")

from unshared.backends.triton import configs  # noqa: E402

FULL = bool(os.environ.get("UNSHARED_FULL_COMPILE"))
#: shared memory one block may use (the opt-in maximum), bytes
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
SCRIPT = Path(__file__).with_name("triton_aot.py")


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(SCRIPT), *(["--full"] if FULL else [])], capture_output=True,
                         text=True, env=env, timeout=3600)
    assert out.returncode == 0, out.stderr[-4000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_every_variant_compiles_without_spills_within_shared_memory(compiled):
    assert compiled
    for r in compiled:
        what = f"{r['kernel']} {r['config']} {r['dtype']} kernel_major={r['kernel_major']} banks={r['banks']} sm_{r['arch']}"
        assert "error" not in r, f"{what}: {r.get('error')}"
        assert r["LOCAL"] == 0 and r["STACK"] == 0, f"{what}: register spills ({r})"
        assert r["shared_bytes"] <= SHARED_LIMIT[r["arch"]], f"{what}: {r['shared_bytes']} B of shared memory"


def test_large_tiles_use_wgmma_on_sm90(compiled):
    # the dot's M dimension (batch tile; reduction tile of the transposed weight gradient) >= 64,
    # a whole warpgroup: Hopper's wgmma, not mma.sync
    eligible = [r for r in compiled if r["arch"] == 90 and r["dtype"] != "float64" and r["m"] >= 64
                and r["config"][4] % 4 == 0]
    assert eligible
    for r in eligible:
        assert r["wgmma"], f"{r['kernel']} {r['config']} {r['dtype']}: no wgmma in the PTX"


def test_the_sweep_covers_every_kernel_and_configuration(compiled):
    covered = {(r["kernel"], tuple(r["config"])) for r in compiled}
    assert {kernel for kernel, _ in covered} == set(configs.CONFIGS)
    if FULL:
        assert covered == {(k, c) for k, cs in configs.CONFIGS.items() for c in cs}
