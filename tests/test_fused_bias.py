"""The bias fused into the compiled CPU kernels (issue 37, item 2): the forward adds the bias as it
stores each output element (per position ``(O, *output_size)`` or shared ``(O,)``) on every path
(channels, rows, batch), and the weight gradient's call also writes a per-position bias's
gradient. Each case against the float64 reference, on every instruction set and forced path, and
the calls seen by the kernels' launcher say which were fused."""
import re

import pytest
import torch
from torch.autograd import forward_ad, gradcheck, gradgradcheck

from configs import Config
from reference import locally_connected_reference
from test_functional import FN, check_against_reference
from unshared._utils import Geometry
from unshared.backends import cpu

pytestmark = pytest.mark.skipif(not cpu.available_isas(),
                                reason=f"the compiled CPU kernels are not built: {cpu._REASON}")
ISAS = [pytest.param(isa, marks=pytest.mark.skipif(isa not in cpu.available_isas(), reason=f"this CPU lacks {isa}"))
        for isa in cpu.ISAS]
DTYPES = [torch.float32, torch.float64]
TOLERANCE = {torch.float32: {"rtol": 1e-4, "atol": 1e-4}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}

# nd, C, O, kernel, stride, padding, dilation, groups, padding mode, input size, batch, bias (set per
# test), layout of x (and so of y), kernel-major weight. Long rows make full and partial tiles of the
# rows path; the "batch-path" cases (channel-major weights, a batch within half a vector, at least a
# vector of channels per group) take the batch path where the path is the kernels' choice; the
# 16-channel case is large enough to run on several threads.
CONFIGS = [
    Config(1, 3, 4, (3,), (1,), 1, (1,), 1, "zeros", (40,), 3, None, "contiguous", False),
    Config(1, 4, 6, (3,), (2,), (1,), (2,), 2, "zeros", (31,), 2, None, "noncontiguous", True),
    Config(1, 2, 3, (3,), (1,), 0, (1,), 1, "zeros", (9,), None, None, "contiguous", True),
    Config(2, 3, 5, (3, 3), (1, 1), 1, (1, 1), 1, "zeros", (7, 12), 1, None, "contiguous", False),
    Config(2, 4, 6, (2, 3), (2, 1), (0, 1), (1, 2), 2, "zeros", (8, 11), 2, None, "channels_last", True),
    Config(2, 6, 6, (3, 3), (1, 2), 1, (1, 1), 3, "zeros", (6, 9), 5, None, "channels_last", False),
    Config(2, 2, 3, (3, 3), (1, 1), 1, (1, 1), 1, "circular", (5, 9), 2, None, "contiguous", False),
    Config(2, 3, 4, (3, 3), (1, 1), 1, (1, 1), 1, "zeros", (5, 5), 0, None, "contiguous", False),
    Config(2, 16, 16, (3, 3), (1, 1), 1, (1, 1), 1, "zeros", (10, 10), 8, None, "contiguous", True),
    Config(2, 16, 8, (3, 3), (1, 1), 1, (1, 1), 2, "zeros", (5, 6), 1, None, "channels_last", False),
    Config(2, 16, 5, (2, 2), (1, 1), 0, (1, 1), 1, "zeros", (4, 5), 2, None, "contiguous", False),
    Config(3, 2, 3, (2, 2, 2), (1, 1, 2), 1, (1, 1, 1), 1, "zeros", (3, 4, 9), 2, None, "channels_last", True),
    Config(3, 4, 4, (2, 1, 2), (1, 1, 1), 0, (1, 1, 2), 2, "zeros", (3, 3, 10), 1, None, "contiguous", False),
]
CONFIG_IDS = ["1d-long-rows", "1d-stride-dilation-groups", "1d-unbatched", "2d-batch1", "2d-groups-channels-last",
              "2d-groups3-batch5", "2d-circular", "2d-batch0", "2d-threads", "2d-batch-path-groups",
              "2d-batch-path-batch2", "3d-channels-last", "3d-groups-batch1"]


@pytest.fixture
def launches(monkeypatch):
    """The kernels' calls as ``(op, whether a bias or bias gradient came with the weight)``."""
    seen, launch = [], cpu._launch

    def spy(op, g, n, x, y, w, kernel_major, state):
        seen.append((op, type(w) is tuple))
        return launch(op, g, n, x, y, w, kernel_major, state)

    monkeypatch.setattr(cpu, "_launch", spy)
    return seen


def with_bias(cfg: Config, bias: str) -> Config:
    return Config(**{**cfg.__dict__, "bias": bias})


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("path", cpu.PATHS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("bias", ["position", "shared"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_and_gradients_match_the_reference(isa, path, cfg, bias, dtype, launches):
    with cpu.use_isa(isa), cpu.use_path(path):
        check_against_reference(with_bias(cfg, bias), dtype, seed=37, backend="cpu")
    if cfg.batch != 0:  # (a batch of 0 launches nothing)
        # the forward adds either bias; the weight gradient's call computes a per-position bias's gradient
        assert sorted(launches) == [("forward", True), ("input_grad", False), ("weight_grad", bias == "position")]


def bank_case(nd: int, bias: str, dtype):
    """x, a weight of shared banks, its bias (per bank or shared), the banks, and the reference's
    weight and bias expanded to the positions (their gradients flow back to the banks)."""
    gen = torch.Generator().manual_seed(38)
    if nd == 1:  # 18 positions on 3 banks
        x, banks, grid = torch.randn(3, 3, 20, generator=gen), ((0, 1, 2) * 6,), (3,)
        w = torch.randn(3, 4, 3, 3, generator=gen) / 3
    else:  # 5 x 5 positions on 3 x 2 banks
        x, banks, grid = torch.randn(2, 2, 6, 7, generator=gen), ((0, 0, 1, 1, 2), (0, 1, 0, 1, 1)), (3, 2)
        w = torch.randn(3, 2, 4, 2, 2, 3, generator=gen) / 3
    b = torch.randn(4, *grid, generator=gen) if bias == "bank" else torch.randn(4, generator=gen)
    x, w, b = (t.to(dtype).requires_grad_() for t in (x, w, b))
    index = [torch.tensor(coords) for coords in banks]
    w_ref, b_ref = w.double(), b.double()
    for d, i in enumerate(index):
        w_ref = w_ref.index_select(d, i)
        b_ref = b_ref.index_select(d + 1, i) if bias == "bank" else b_ref
    return x, w, b, banks, w_ref, b_ref


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("path", cpu.PATHS)
@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("bias", ["bank", "shared"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_shared_banks(isa, path, nd, bias, dtype, launches):
    x, w, b, banks, w_ref, b_ref = bank_case(nd, bias, dtype)
    with cpu.use_isa(isa), cpu.use_path(path):
        y = FN[nd](x, w, b, backend="cpu", banks=banks)
        gy = torch.randn(y.shape, dtype=dtype)
        got = torch.autograd.grad(y, (x, w, b), gy)
    x_ref = x.detach().double().requires_grad_()
    want = locally_connected_reference(x_ref, w_ref, b_ref)
    torch.testing.assert_close(y.double(), want, **TOLERANCE[dtype])
    for ours, ref in zip(got, torch.autograd.grad(want, (x_ref, w, b), gy.double())):
        torch.testing.assert_close(ours.double(), ref.double(), **TOLERANCE[dtype])
    # each position's bias gradient is written once, whichever bank's thread sums its weight gradient
    assert sorted(launches) == [("forward", True), ("input_grad", False), ("weight_grad", bias == "bank")]


@pytest.mark.parametrize("path", cpu.PATHS)
@pytest.mark.parametrize("bias", ["position", "shared"])
@pytest.mark.parametrize("input_grad", [False, True])
def test_a_bias_that_needs_a_gradient_while_the_weight_does_not(path, bias, input_grad, launches):
    cfg = with_bias(CONFIGS[4], bias)
    x, w, b = cfg.tensors(dtype=torch.float32, seed=39)
    x.requires_grad_(input_grad)
    b.requires_grad_()
    with cpu.use_path(path):
        y = FN[cfg.nd](x, w, b, **cfg.kwargs(), backend="cpu")
        gy = torch.randn(y.shape)
        y.backward(gy)
    b_ref = b.detach().double().requires_grad_()
    want = locally_connected_reference(x.detach(), w, b_ref, **cfg.kwargs())
    torch.testing.assert_close(y.double(), want, **TOLERANCE[torch.float32])
    want.backward(gy.double())
    assert w.grad is None
    torch.testing.assert_close(b.grad.double(), b_ref.grad, **TOLERANCE[torch.float32])
    assert sorted(launches) == [("forward", True)] + [("input_grad", False)] * input_grad  # no weight gradient


@pytest.mark.parametrize("bias", ["position", "shared"])
def test_a_weight_gradient_without_the_bias_is_not_asked_for_it(bias, launches):
    cfg = with_bias(CONFIGS[5], bias)
    x, w, b = cfg.tensors(dtype=torch.float64, seed=40)
    w.requires_grad_()
    y = FN[cfg.nd](x, w, b, **cfg.kwargs(), backend="cpu")
    gy = torch.randn(y.shape, dtype=torch.float64)
    (gw,) = torch.autograd.grad(y, w, gy)
    want = locally_connected_reference(x, w, b, **cfg.kwargs())
    torch.testing.assert_close(gw, torch.autograd.grad(want, w, gy)[0], **TOLERANCE[torch.float64])
    assert sorted(launches) == [("forward", True), ("weight_grad", False)]


@pytest.mark.parametrize("path", cpu.PATHS)
@pytest.mark.parametrize("bias", ["position", "shared"])
def test_without_gradients_the_bias_is_added_by_the_kernels_too(path, bias, launches):
    cfg = with_bias(CONFIGS[0], bias)
    x, w, b = cfg.tensors(dtype=torch.float32, seed=41, requires_grad=True)
    with cpu.use_path(path):
        with_grad = FN[cfg.nd](x, w, b, **cfg.kwargs(), backend="cpu")
        with torch.no_grad():
            without = FN[cfg.nd](x, w, b, **cfg.kwargs(), backend="cpu")
    assert torch.equal(with_grad, without)
    torch.testing.assert_close(without.double(), locally_connected_reference(x, w, b, **cfg.kwargs()),
                               **TOLERANCE[torch.float32])
    assert launches == [("forward", True), ("forward", True)]


@pytest.mark.parametrize("path", cpu.PATHS)
@pytest.mark.parametrize("bias", ["position", "shared"])
def test_gradcheck_and_gradgradcheck_with_a_bias(path, bias):
    cfg = Config(2, 2, 3, (2, 3), (1, 2), 1, (1, 1), 1, "zeros", (4, 9), 2, bias, "contiguous", True)
    x, w, b = cfg.tensors(seed=42, requires_grad=True)

    def fn(*tensors):
        return FN[2](*tensors, **cfg.kwargs(), backend="cpu")

    with cpu.use_path(path):
        assert gradcheck(fn, (x, w, b))
        assert gradgradcheck(fn, (x, w, b), fast_mode=True)


@pytest.mark.parametrize("bias", ["position", "shared"])
def test_forward_mode_with_a_dual_bias(bias):
    cfg = with_bias(CONFIGS[3], bias)
    x, w, b = cfg.tensors(seed=43)
    tx, tw, tb = (torch.randn_like(t) for t in (x, w, b))
    with forward_ad.dual_level():
        dual = FN[cfg.nd](*(forward_ad.make_dual(p, t) for p, t in ((x, tx), (w, tw), (b, tb))), **cfg.kwargs(),
                          backend="cpu")
        y, ty = forward_ad.unpack_dual(dual)
    want, t_want = torch.func.jvp(lambda *p: locally_connected_reference(*p, **cfg.kwargs()), (x, w, b), (tx, tw, tb))
    torch.testing.assert_close(y, want, **TOLERANCE[torch.float64])
    torch.testing.assert_close(ty, t_want, **TOLERANCE[torch.float64])


def test_vmap_over_a_batch_of_inputs_with_a_bias():
    cfg = with_bias(CONFIGS[0], "position")
    x, w, b = cfg.tensors(seed=44)
    xs = torch.stack([x, x.flip(0)])
    got = torch.func.vmap(lambda xi: FN[1](xi, w, b, **cfg.kwargs(), backend="cpu"))(xs)
    want = torch.stack([locally_connected_reference(xi, w, b, **cfg.kwargs()) for xi in xs])
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float64])


def test_the_kernels_refuse_a_bias_smaller_than_the_layer():
    g = Geometry((6,), (4,), (3,), (1,), ((0, 0),), (1,), 1, 3, 5)
    x, w = torch.randn(2, 3, 6), torch.randn(4, 5, 3, 3)
    memory, kernel_major = cpu._weight_memory(w)
    for small in (torch.randn(4), torch.randn(5, 3)):  # 5 channels, 4 positions
        with pytest.raises(ValueError, match=re.escape(f"bias must be (5,) or (5, 4), got bias of shape {tuple(small.shape)}")):
            cpu.forward(x, w, g, bias=small)
        # the C boundary's own check, past the Python one: a shared bias of 4 < 5, a per-position one of 15 < 20
        y = torch.empty(2, 5, 4)
        with pytest.raises(ValueError, match=r"status 8: the bias \(or its gradient\) reaches past the memory"):
            cpu._launch("forward", g, 2, x, y, (memory, small), kernel_major, None)
    with pytest.raises(TypeError, match="tensors must all be float32 or all float64"):
        cpu.forward(x, w, g, bias=torch.randn(5, dtype=torch.float64))
    y = cpu.forward(x, w, g, bias=torch.zeros(5, 4)[:, ::2].repeat(1, 2))  # a per-position bias, copied contiguous
    torch.testing.assert_close(y, cpu.forward(x, w, g))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("path", cpu.PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_backend_alone(isa, path, dtype):
    # the backend's own interface: forward(..., bias=) and weight_grad(..., bias_grad=True), a
    # transposed (non-contiguous) bias and channels-last tensors, batch 0 included
    g = Geometry((7, 12), (5, 10), (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, 3, 4)
    w = torch.randn(5, 10, 4, 3, 3, 3, dtype=dtype)
    for n in (0, 1, 4):
        x = torch.randn(n, 3, 7, 12, dtype=dtype).contiguous(memory_format=torch.channels_last)
        for b in (torch.randn(4, dtype=dtype), torch.randn(10, 5, 4, dtype=dtype).permute(2, 1, 0)):
            with cpu.use_isa(isa), cpu.use_path(path):
                y = cpu.forward(x, w, g, bias=b)
                gy = torch.randn_like(y)
                gw, gb = cpu.weight_grad(x, gy, g, kernel_major=False, bias_grad=True)
                gw_alone = cpu.weight_grad(x, gy, g, kernel_major=False)
            want = locally_connected_reference(x, w, b)
            torch.testing.assert_close(y.double(), want, **TOLERANCE[dtype])
            assert gb.shape == (4, 5, 10) and gb.is_contiguous()
            torch.testing.assert_close(gb, gy.sum(0), **TOLERANCE[dtype])
            assert torch.equal(gw, gw_alone)


def test_the_backend_refuses_a_bias_of_another_shape():
    # (the layers check the bias first; the backend alone must not read a view of (O, 1) as (O, P))
    g = Geometry((6,), (4,), (3,), (1,), ((0, 0),), (1,), 1, 2, 4)
    x, w = torch.randn(2, 2, 6), torch.randn(4, 4, 2, 3)
    for bias in (torch.randn(100)[:4].view(4, 1), torch.randn(5), torch.randn(4, 4, 1)):
        with pytest.raises(ValueError, match=re.escape(f"bias must be (4,) or (4, 4), got bias of shape {tuple(bias.shape)}")):
            cpu.forward(x, w, g, bias=bias)
