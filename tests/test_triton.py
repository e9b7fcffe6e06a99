"""The Triton backend against the float64 reference: forward, input and weight gradients.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (set by conftest) on CPU tensors and
small shapes, with one fixed block configuration; with a GPU they run on CUDA, at DeepFace sizes too.
"""
import copy
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from torch.autograd import gradcheck, gradgradcheck

pytest.importorskip("triton", reason="Triton is not installed")

import unshared  # noqa: E402
import unshared.functional as UF  # noqa: E402
from configs import Config, configs  # noqa: E402
from conftest import CPU_AUTO, EXAMPLES_SCALE  # noqa: E402
from test_functional import FN, check_against_reference, check_banks_against_reference  # noqa: E402
from unshared.backends import choose_backend  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from unshared.backends.triton import configs as triton_configs  # noqa: E402
from unshared.backends.triton import kernels as triton_kernels  # noqa: E402
from unshared.backends.triton import launch as triton_backend  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@settings(max_examples=40 * EXAMPLES_SCALE)
@given(cfg=configs(tiny=True, max_batch=2))
def test_float64_matches_reference(cfg):
    check_against_reference(cfg, torch.float64, seed=10, backend="triton", device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@settings(max_examples=12 * EXAMPLES_SCALE)
@given(cfg=configs(tiny=True, max_batch=2))
def test_low_precision_matches_reference(dtype, cfg):
    # TF32 is the caller's choice (off by default); this compares plain float32
    check_against_reference(cfg, dtype, seed=11, backend="triton", device=DEVICE)


def test_tf32_setting_is_read_by_either_api():
    matmul = torch.backends.cuda.matmul
    try:
        matmul.fp32_precision = "tf32"  # the newer API: reading allow_tf32 would now raise
        assert triton_backend._tf32_allowed()
        matmul.fp32_precision = "ieee"
        assert not triton_backend._tf32_allowed()
        matmul.fp32_precision = "none"
        matmul.allow_tf32 = True
        assert triton_backend._tf32_allowed()
    finally:
        matmul.fp32_precision = "none"
        matmul.allow_tf32 = False
    assert not triton_backend._tf32_allowed()


# A few fixed cases that exercise every block edge: more output channels and reduction elements
# than one block (16 and 32 under the interpreter), odd sizes, batch larger than a block.
EDGE_CASES = [
    Config(2, 3, 17, (3, 5), (1, 2), (1, 2), (1, 1), 1, "zeros", (4, 7), 17, "position", "contiguous"),
    Config(1, 35, 2, (1,), (1,), 0, (1,), 1, "zeros", (3,), 1, "shared", "noncontiguous"),
    Config(2, 4, 6, (2, 2), (2, 2), 1, (1, 1), 2, "circular", (3, 3), None, None, "channels_last"),
    Config(3, 2, 2, (2, 2, 2), (1, 1, 1), "same", (1, 2, 1), 2, "replicate", (2, 3, 2), 0, "position", "contiguous"),
]


@pytest.mark.parametrize("cfg", EDGE_CASES, ids=["blocks", "wide-reduction", "groups-circular", "3d-batch0"])
def test_block_edges(cfg):
    check_against_reference(cfg, torch.float64, seed=12, backend="triton", device=DEVICE)


@pytest.mark.parametrize("cfg", [
    Config(2, 2, 2, (2, 3), (1, 2), 1, (1, 1), 1, "zeros", (3, 5), 2, "position", "noncontiguous"),
    Config(2, 4, 4, (2, 2), (2, 2), 1, (1, 1), 2, "circular", (3, 3), 2, "shared", "channels_last"),
], ids=["plain", "groups"])
def test_gradcheck_and_gradgradcheck(cfg):
    x, w, b = cfg.tensors(requires_grad=True, device=DEVICE)
    inputs = (x, w) if b is None else (x, w, b)
    fn = lambda *t: FN[cfg.nd](*t, **cfg.kwargs(), backend="triton")  # noqa: E731
    assert gradcheck(fn, inputs, fast_mode=True)
    assert gradgradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("kind", ["tiled", "region"])
def test_partial_sharing_adds_bank_gradients(kind):
    # banks shared by several positions: the weight gradient sums them (atomically in the kernel)
    extra = {"tile_size": 2} if kind == "tiled" else {"regions": (2, 1)}
    cls = unshared.TiledLocallyConnected2d if kind == "tiled" else unshared.RegionLocallyConnected2d
    ours = cls(3, 2, 2, padding=1, input_size=(3, 4), dtype=torch.float64, device=DEVICE,
               backend="triton", **extra)
    assert ours.position_bank is not None
    check_banks_against_reference(ours, torch.randn(3, 3, 3, 4, dtype=torch.float64, device=DEVICE,
                                                    requires_grad=True), padding=1)


def test_module_and_functional_agree():
    layer = unshared.LocallyConnected2d(4, 6, 3, 2, 1, groups=2, input_size=(5, 6), backend="triton",
                                        device=DEVICE, dtype=torch.float64)
    assert "backend=triton" in repr(layer)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(layer(x), UF.locally_connected2d(x, layer.weight, layer.bias, 2, 1, groups=2,
                                                                backend="torch"))


# ----------------------------------------------------------------------------- backend choice

def _call(x, w, backend):
    return UF.locally_connected1d(x, w, backend=backend)


def test_auto_takes_the_cpu_kernels_on_cpu_and_triton_on_cuda():
    x, w = torch.randn(1, 2, 5), torch.randn(3, 4, 2, 3)
    g = unshared._utils.Geometry((5,), (3,), (3,), (1,), ((0, 0),), (1,), 1, 2, 4)
    assert choose_backend(x, w, g, "auto") == CPU_AUTO
    if CUDA:
        # measured inside the operator (or Triton when measuring is off)
        assert choose_backend(x.cuda(), w.cuda(), g, "auto") in ("auto", "triton")


def test_explicit_triton_that_cannot_run_says_why(monkeypatch):
    x, w = torch.randn(1, 2, 5), torch.randn(3, 4, 2, 3)
    monkeypatch.setattr(triton_configs, "interpreting", lambda: False)
    with pytest.raises(ValueError, match=r"backend='triton' cannot compute this call: the input is on cpu"):
        _call(x, w, "triton")
    monkeypatch.setattr(triton_backend, "TRITON_INSTALLED", False)
    with pytest.raises(ValueError, match=r"Triton is not installed \(pip install triton"):
        _call(x, w, "triton")


def test_import_unshared_does_not_import_triton():
    # (calling any torch.library op imports torch._dynamo, which imports Triton when installed:
    # that is PyTorch's doing; our kernels module must still stay unloaded on the PyTorch path)
    code = ("import sys, unshared, torch; print('triton' in sys.modules); "
            "unshared.LocallyConnected1d(1, 1, 1, input_size=3)(torch.ones(1, 1, 3)); "
            "print('unshared.backends.triton.kernels' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "TRITON_INTERPRET": "0"})
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- on a GPU

DEEPFACE = {"L4": (63, 9, 1), "L5": (55, 7, 2), "L6": (25, 5, 1)}


@requires_cuda
@pytest.mark.parametrize("layer", DEEPFACE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deepface_sizes_on_cuda(layer, dtype):
    size, kernel, stride = DEEPFACE[layer]
    x = torch.randn(32, 16, size, size, device="cuda", dtype=dtype, requires_grad=True)
    local = unshared.LocallyConnected2d(16, 16, kernel, stride, input_size=size, device="cuda", dtype=dtype)
    y = local(x)
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, local.weight), gy)
    # the PyTorch backend in float64 on the GPU is the reference at this size
    x64, w64 = x.detach().double().requires_grad_(), local.weight.detach().double().requires_grad_()
    y64 = UF.locally_connected2d(x64, w64, local.bias.detach().double(), stride, backend="torch")
    gx64, gw64 = torch.autograd.grad(y64, (x64, w64), gy.double())
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype]
    for ours, ref in ((y, y64), (gx, gx64), (gw, gw64)):
        scale = ref.abs().max().item()
        torch.testing.assert_close(ours.double(), ref, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("banks", [False, True])
def test_programs_past_the_first_grid_row(monkeypatch, banks):
    # the programs lie on a 2-d grid whose rows hold at most MAX_GRID_X (2^31 - 1 on a GPU):
    # force many short rows, so that the last row's excess programs must do nothing
    monkeypatch.setattr(triton_configs, "MAX_GRID_X", 5)
    cls = unshared.TiledLocallyConnected2d if banks else unshared.LocallyConnected2d
    extra = {"tile_size": 2} if banks else {}
    layer = cls(3, 5, 3, padding=1, input_size=(5, 4), dtype=torch.float64, device=DEVICE, backend="triton", **extra)
    reference = copy.deepcopy(layer)
    reference.backend = "torch"
    x = torch.randn(3, 3, 5, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y, y_ref = layer(x), reference(x)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y)
    for ours, ref in zip(torch.autograd.grad(y, (x, layer.weight), gy),
                         torch.autograd.grad(y_ref, (x, reference.weight), gy)):
        torch.testing.assert_close(ours, ref)


def test_bucketing_and_grid_arithmetic():
    assert [triton_configs.bucket(n) for n in (1, 2, 3, 31, 32, 33, 200)] == [1, 2, 4, 32, 32, 64, 256]
    assert triton_configs.grid(10) == (10, 1)
    big = 3 * triton_configs.MAX_GRID_X + 1
    x, y = triton_configs.grid(big)
    assert x == triton_configs.MAX_GRID_X and y == 4 and x * y >= big


def test_a_call_too_large_for_a_cuda_grid_is_refused_with_the_reason():
    # can_run counts the programs of the smallest tiles; shapes on the meta device cost nothing
    g = unshared._utils.Geometry((4096, 4096, 4096), (4096, 4096, 4096), (1, 1, 1), (1, 1, 1), ((0, 0),) * 3,
                                 (1, 1, 1), 1, 64, 64)
    x = torch.empty(1, 64, 1, 1, 1, device=DEVICE).expand(1 << 20, -1, -1, -1, -1)  # only its sizes matter
    reason = triton_backend.can_run(x, None, g)
    assert reason is not None and "more than a CUDA grid holds" in reason


@triton.jit
def _bank_offset_probe(out_ptr, bank, G, Og, R):
    tl.store(out_ptr, triton_kernels._bank_offset(tl.full((), bank, tl.int64), G, Og, R))


def test_bank_offsets_are_int64_past_two_to_the_31():
    # the weight offset of a bank is bank * G * Og * R; as an int32 product (G * Og * R first) it
    # wraps past 2^31 elements. The helper the kernels use, in a kernel of its own:
    out = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    _bank_offset_probe[(1,)](out, 3, 2, 1 << 15, 1 << 16)
    assert out.item() == 3 * 2 * (1 << 15) * (1 << 16)  # 3 * 2^32: past int32


def test_autotuning_key_buckets_the_batch_and_positions():
    key = triton_configs.AUTOTUNE_KEY
    assert "N" not in key and "P" not in key  # an exact size would re-tune on every new batch size
    assert {"N_BUCKET", "P_BUCKET", "HAS_BANKS", "KERNEL_MAJOR", "PRECISION"} <= set(key)
    g = unshared._utils.Geometry((9,), (7,), (3,), (1,), ((0, 0),), (1,), 1, 2, 4)
    for n, bucket in ((33, 64), (64, 64), (65, 128)):
        args = triton_backend._geometry_args(g, n, g.positions)
        assert args["N"] == n and args["N_BUCKET"] == bucket and args["P_BUCKET"] == 8


def test_one_module_reads_triton_interpret():
    from pathlib import Path
    src = Path(unshared.__file__).parent
    readers = [p.relative_to(src).as_posix() for p in src.rglob("*.py") if "TRITON_INTERPRET\")" in p.read_text()
               or "TRITON_INTERPRET')" in p.read_text()]
    assert readers == ["backends/triton/configs.py"]


def test_bank_index_is_built_once_per_device():
    g = unshared._utils.Geometry((6,), (4,), (3,), (1,), ((0, 0),), (1,), 1, 2, 4, (2,), ((0, 1, 0, 1),))
    first = unshared._utils.flat_bank_index(g, DEVICE)
    assert first.tolist() == [0, 1, 0, 1] and unshared._utils.flat_bank_index(g, DEVICE) is first
