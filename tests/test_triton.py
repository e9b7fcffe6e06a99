"""The Triton kernels against the float64 reference: forward, input and weight gradients, for
each kernel family (tensor cores over a tile of positions, tensor cores one position at a time,
the channel-poor CUDA-core kernels), every weight layout, banks, groups, 1d/2d/3d.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (set by conftest) on CPU tensors and
small shapes, each family forced in turn; with a GPU they run on CUDA, at DeepFace sizes too.
"""
import contextlib

import pytest
import torch
from hypothesis import given, settings
from torch.autograd import gradcheck, gradgradcheck

pytest.importorskip("triton", reason="Triton is not installed")

import unshared  # noqa: E402
import unshared.functional as UF  # noqa: E402
from configs import Config, configs  # noqa: E402
from conftest import EXAMPLES_SCALE  # noqa: E402
from test_functional import FN, check_against_reference, check_banks_against_reference  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from unshared.backends.triton import common as triton_common  # noqa: E402
from unshared.backends.triton import configs as triton_configs  # noqa: E402
from unshared.backends.triton import tuning  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
OPS = ("forward", "input_grad", "weight_grad")


def _with_blocks(c: triton_configs.Candidate, **blocks) -> triton_configs.Candidate:
    return triton_configs.Candidate(c.kernel, tuple((n, blocks.get(n, v)) for n, v in c.blocks), c.num_warps,
                                    c.num_stages)


#: The kernel families, as the configuration forced on each operation (None: the default).
FAMILIES = {
    "tiles": {op: triton_configs.INTERPRETER[op] for op in OPS},  # BLOCK_P = 2: batched products
    "single": {op: _with_blocks(triton_configs.INTERPRETER[op], BLOCK_P=1) for op in OPS},  # 2-d products
    "small": {op: triton_configs.small_candidates(op, 2, 20)[1] for op in OPS},  # CUDA-core FMAs
}


@contextlib.contextmanager
def family(name: str):
    """Every operation runs the kernels of family ``name`` inside the block."""
    with contextlib.ExitStack() as stack:
        for op, candidate in FAMILIES[name].items():
            stack.enter_context(tuning.forcing(op, candidate))
        yield


@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=8 * EXAMPLES_SCALE)
@given(cfg=configs(tiny=True, max_batch=2))
def test_float64_matches_reference(name, cfg):
    with family(name):
        check_against_reference(cfg, torch.float64, seed=10, backend="triton", device=DEVICE)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@settings(max_examples=3 * EXAMPLES_SCALE)
@given(cfg=configs(tiny=True, max_batch=2))
def test_low_precision_matches_reference(dtype, name, cfg):
    # TF32 is the caller's choice (off by default); this compares plain float32
    with family(name):
        check_against_reference(cfg, dtype, seed=11, backend="triton", device=DEVICE)


#: (channels, kernel) of a reduction of ones whose float32 sum is exact, and that sum rounded once:
#: bfloat16 1006 -> 1008 (a tie: truncation gives 1004, a bfloat16 sum stalls at 256); float16
#: 2100 (a float16 sum stalls at 2048). The weight gradient sums as many samples, the input
#: gradient as many output channels.
SUMS = {torch.bfloat16: (2, 503, 1008.0), torch.float16: (30, 70, 2100.0)}


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_summed_in_float32_and_rounded_once(name, dtype):
    if name == "small" and dtype == torch.float16:  # the same float32 sums as bfloat16, 2100 interpreted steps
        pytest.skip("the channel-poor kernels' summation is checked in bfloat16")
    channels, kernel, exact = SUMS[dtype]
    terms = channels * kernel
    ones = dict(dtype=dtype, device=DEVICE)
    with family(name):
        x, w = torch.ones(1, channels, kernel, **ones), torch.ones(1, 1, channels, kernel, **ones)
        assert UF.locally_connected1d(x, w, backend="triton").item() == exact
        xb = torch.ones(terms, 1, 1, **ones, requires_grad=True)
        wb = torch.ones(1, 1, 1, 1, **ones, requires_grad=True)
        UF.locally_connected1d(xb, wb, backend="triton").backward(torch.ones(terms, 1, 1, **ones))
        assert wb.grad.item() == exact
        xi = torch.ones(1, 1, 1, **ones, requires_grad=True)
        wi = torch.ones(1, terms, 1, 1, **ones, requires_grad=True)
        UF.locally_connected1d(xi, wi, backend="triton").backward(torch.ones(1, terms, 1, **ones))
        assert xi.grad.item() == exact


@triton.jit
def _rounding_probe(src_ptr, dst_ptr, UPCAST: tl.constexpr):
    offsets = tl.arange(0, 8)
    tl.store(dst_ptr + offsets, triton_common.to_output(tl.load(src_ptr + offsets), dst_ptr, UPCAST))


def test_bfloat16_outputs_round_to_nearest_even():
    values = torch.tensor([3000.0, 3000.5, 2999.0, 3016.0, 1 + 2**-8, 1 + 3 * 2**-8, -3000.0, float("nan")],
                          device=DEVICE)
    out = torch.empty(8, dtype=torch.bfloat16, device=DEVICE)
    _rounding_probe[(1,)](values, out, UPCAST=triton_configs.interpreting())
    expected = values.to(torch.bfloat16)  # PyTorch rounds to nearest even
    assert torch.equal(out[:-1], expected[:-1]) and out[-1].isnan()


# A few fixed cases that exercise every block edge: more output channels and reduction elements
# than one block (16 and 32 under the interpreter), odd sizes, batch larger than a block.
EDGE_CASES = [
    Config(2, 3, 17, (3, 5), (1, 2), (1, 2), (1, 1), 1, "zeros", (4, 7), 17, "position", "contiguous"),
    Config(1, 35, 2, (1,), (1,), 0, (1,), 1, "zeros", (3,), 1, "shared", "noncontiguous", True),
    Config(2, 4, 6, (2, 2), (2, 2), 1, (1, 1), 2, "circular", (3, 3), None, None, "channels_last"),
    Config(3, 2, 2, (2, 2, 2), (1, 1, 1), "same", (1, 2, 1), 2, "replicate", (2, 3, 2), 0, "position", "contiguous"),
    Config(2, 3, 4, (3, 3), (3, 2), 1, (2, 1), 1, "zeros", (7, 6), 2, None, "contiguous", True),
]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("cfg", EDGE_CASES, ids=["blocks", "wide-reduction", "groups-circular", "3d-batch0",
                                                 "stride-dilation"])
def test_block_edges(cfg, name):
    with family(name):
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


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("kind", ["tiled", "region"])
def test_partial_sharing_adds_bank_gradients(kind, name):
    # banks shared by several positions: the weight gradient sums them (atomically in the kernel)
    extra = {"tile_size": 2} if kind == "tiled" else {"regions": (2, 1)}
    cls = unshared.TiledLocallyConnected2d if kind == "tiled" else unshared.RegionLocallyConnected2d
    ours = cls(3, 2, 2, padding=1, input_size=(3, 4), dtype=torch.float64, device=DEVICE,
               backend="triton", **extra)
    assert ours.position_bank is not None
    with family(name):
        check_banks_against_reference(ours, torch.randn(3, 3, 3, 4, dtype=torch.float64, device=DEVICE,
                                                        requires_grad=True), padding=1)


def test_module_and_functional_agree():
    layer = unshared.LocallyConnected2d(4, 6, 3, 2, 1, groups=2, input_size=(5, 6), backend="triton",
                                        device=DEVICE, dtype=torch.float64)
    assert "backend=triton" in repr(layer)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(layer(x), UF.locally_connected2d(x, layer.weight, layer.bias, 2, 1, groups=2,
                                                                backend="torch"))


# ----------------------------------------------------------------------------- on a GPU

DEEPFACE = {"L4": (63, 9, 1), "L5": (55, 7, 2), "L6": (25, 5, 1)}


@requires_cuda
@pytest.mark.parametrize("layer", DEEPFACE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deepface_sizes_on_cuda(layer, dtype):
    size, kernel, stride = DEEPFACE[layer]
    x = torch.randn(32, 16, size, size, device="cuda", dtype=dtype, requires_grad=True)
    local = unshared.LocallyConnected2d(16, 16, kernel, stride, input_size=size, device="cuda", dtype=dtype,
                                        backend="triton")
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


@requires_cuda
def test_cuda_autocast_runs_the_kernels_in_bfloat16():
    layer = unshared.LocallyConnected2d(8, 8, 3, padding=1, input_size=12, device="cuda", backend="triton")
    x = torch.randn(4, 8, 12, 12, device="cuda", requires_grad=True)
    expected = layer(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=3e-2, atol=3e-2)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32
