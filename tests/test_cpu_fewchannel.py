"""The compiled CPU kernels' rows path (few input channels: vectors along the output positions of a
row, csrc/kernels_rows.h and kernels_rows_ig.h) against the float64 reference, on every instruction
set, forced (``cpu.use_path("rows")``) and as chosen by shape: 1-3 channels per group, long 1d
rows, one-sided padding, kernels at least as large as the input, strides, dilations, groups, banks,
every layout, float32 and float64, gradcheck."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

import unshared
from configs import Config
from conftest import EXAMPLES_SCALE
from reference import locally_connected_reference
from test_cpu_backend import ISAS, requires_kernels
from test_functional import FN, check_against_reference, check_banks_against_reference
from unshared._utils import Geometry
from unshared.backends import cpu

PATHS = ["rows", "auto"]


@st.composite
def few_channel_configs(draw):
    """1-3 input channels per group, 1d (sometimes long), 2d or 3d; kernels up to past the input."""
    nd = draw(st.sampled_from([1, 1, 2, 3]))
    groups, cg, og = draw(st.sampled_from([1, 1, 2])), draw(st.integers(1, 3)), draw(st.integers(1, 9))
    kernel = tuple(draw(st.integers(1, 5)) for _ in range(nd))
    stride = tuple(draw(st.sampled_from([1, 1, 2, 3])) for _ in range(nd))
    dilation = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(nd))
    padding = tuple(draw(st.integers(0, 3)) for _ in range(nd))
    long_row = 200 if nd == 1 and draw(st.booleans()) else 20
    size = tuple(max(d * (k - 1) + 1 - 2 * p, 1) + draw(st.integers(0, long_row if i == nd - 1 else 4))
                 for i, (k, d, p) in enumerate(zip(kernel, dilation, padding)))
    return Config(nd, groups * cg, groups * og, kernel, stride, padding, dilation, groups, "zeros", size,
                  draw(st.integers(1, 19)), draw(st.sampled_from(["position", None])),
                  draw(st.sampled_from(["contiguous", "noncontiguous", "channels_last"])), draw(st.booleans()))


@requires_kernels
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=60 * EXAMPLES_SCALE, deadline=None)
@given(cfg=few_channel_configs())
def test_rows_path_matches_reference(isa, path, cfg):
    with cpu.use_isa(isa), cpu.use_path(path):
        check_against_reference(cfg, torch.float64, seed=40, backend="cpu")


# tiles past the vector width with partial last tiles, output-channel blocks and their remainders
MEDIUM = [
    Config(1, 1, 1, (10,), (1,), 0, (1,), 1, "zeros", (1000,), 33, None, "contiguous", False),
    Config(1, 4, 8, (10,), (1,), 4, (1,), 1, "zeros", (203,), 9, "position", "contiguous", True),
    Config(1, 2, 6, (7,), (3,), 5, (2,), 2, "zeros", (157,), 5, None, "noncontiguous", False),
    Config(2, 3, 11, (7, 7), (3, 3), 2, (1, 1), 1, "zeros", (31, 40), 17, None, "contiguous", True),
    Config(2, 3, 5, (3, 3), (1, 1), 1, (1, 1), 1, "zeros", (9, 37), 4, "shared", "channels_last", False),
    Config(3, 2, 4, (2, 3, 3), (1, 1, 2), 1, (1, 2, 1), 1, "zeros", (3, 5, 35), 6, None, "contiguous", True),
    Config(1, 3, 2, (9,), (1,), 2, (1,), 1, "zeros", (6,), 3, None, "contiguous", False),  # kernel > input
    # strides along w: forward and weight grad read a copy of x with the phases apart
    Config(1, 2, 3, (3,), (4,), 2, (1,), 1, "zeros", (101,), 7, None, "noncontiguous", False),
    Config(2, 3, 4, (3, 5), (2, 3), 1, (1, 1), 1, "zeros", (9, 50), 3, "shared", "channels_last", False),
    # a batch past the weight grad's block of samples (ROWS_MB): sums carried between blocks
    Config(1, 1, 2, (5,), (1,), 1, (1,), 1, "zeros", (40,), 131, None, "contiguous", False),
]
MEDIUM_IDS = ["genomics-like", "genomics-wide-like", "groups-stride3-dilation", "alltnn-like",
              "channels-last", "3d", "kernel-past-input", "stride-past-kernel", "channels-last-stride",
              "batch-past-block"]


@requires_kernels
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cfg", MEDIUM, ids=MEDIUM_IDS)
def test_rows_path_on_every_instruction_set(isa, path, cfg):
    with cpu.use_isa(isa), cpu.use_path(path):
        check_against_reference(cfg, torch.float64, seed=41, backend="cpu")
        check_against_reference(cfg, torch.float32, seed=42, backend="cpu")


@requires_kernels
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("length, kernel, low", [(3000, 10, 9), (40, 8, 7), (5, 9, 8), (6, 4, 0)],
                         ids=["causal-long", "causal", "kernel-past-input", "high-side-only"])
def test_one_sided_padding(isa, length, kernel, low):
    # the backend's geometry pads (low, high) per dimension: causal padding (all on the low side) and
    # all on the high side, against the reference on the explicitly padded input
    high = kernel - 1 - low
    g = Geometry((length,), (length,), (kernel,), (1,), ((low, high),), (1,), 1, 2, 3)
    gen = torch.Generator().manual_seed(43)
    x = torch.randn(5, 2, length, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(length, 3, 2, kernel, generator=gen, dtype=torch.float64, requires_grad=True)
    want = locally_connected_reference(torch.nn.functional.pad(x, (low, high)), w)
    gy = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    want_gx, want_gw = torch.autograd.grad(want, (x, w), gy)
    with cpu.use_isa(isa), cpu.use_path("rows"):
        xd, wd = x.detach(), w.detach()
        torch.testing.assert_close(cpu.forward(xd, wd, g), want)
        torch.testing.assert_close(cpu.input_grad(gy, wd, g), want_gx)
        torch.testing.assert_close(cpu.weight_grad(xd, gy, g, kernel_major=False), want_gw)


@requires_kernels
@pytest.mark.parametrize("isa", ISAS)
def test_rows_path_with_shared_banks(isa):
    # forward and input gradient read the banks; the weight gradient of banks takes the channel path
    layer = unshared.TiledLocallyConnected2d(2, 5, 3, padding=1, tile_size=2, input_size=(5, 19),
                                             dtype=torch.float64, backend="cpu")
    with cpu.use_isa(isa), cpu.use_path("rows"):
        check_banks_against_reference(layer, torch.randn(3, 2, 5, 19, dtype=torch.float64, requires_grad=True),
                                      padding=1)


@requires_kernels
@pytest.mark.parametrize("cfg", [
    Config(1, 1, 2, (4,), (1,), 2, (2,), 1, "zeros", (21,), 3, None, "contiguous"),
    Config(2, 2, 3, (2, 3), (1, 2), 1, (1, 1), 1, "zeros", (3, 18), 2, "position", "noncontiguous", True),
], ids=["1d-dilation", "2d-stride"])
def test_rows_path_gradcheck(cfg):
    x, w, b = cfg.tensors(requires_grad=True)
    inputs = (x, w) if b is None else (x, w, b)
    fn = lambda *t: FN[cfg.nd](*t, **cfg.kwargs(), backend="cpu")  # noqa: E731
    with cpu.use_path("rows"):
        assert gradcheck(fn, inputs, fast_mode=True)


def test_use_path_refuses_unknown_paths():
    with pytest.raises(ValueError, match=r"path must be one of \('auto', 'channels', 'rows'\), got path='batch'"):
        with cpu.use_path("batch"):
            pass
