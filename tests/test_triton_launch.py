"""The Triton launcher: the measured-once choice and cached direct launches (:mod:`tuning`), CUDA
graphs, grids, refusals, the backend choice and the settings it reads."""
import copy
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed")

import unshared  # noqa: E402
import unshared.functional as UF  # noqa: E402
from conftest import CPU_AUTO  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from unshared.backends import choose_backend, selection  # noqa: E402
from unshared.backends.triton import common as triton_common  # noqa: E402
from unshared.backends.triton import configs as triton_configs  # noqa: E402
from unshared.backends.triton import launch as triton_backend  # noqa: E402
from unshared.backends.triton import tuning  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.fixture
def tf32_state():
    """The TF32 flags as they were before the test, restored after it."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    allowed = matmul.allow_tf32 if precision in (None, "none") else None
    yield matmul
    if precision is not None:
        matmul.fp32_precision = precision
    if allowed is not None:
        matmul.allow_tf32 = allowed


def test_tf32_setting_is_read_by_either_api(tf32_state):
    tf32_state.fp32_precision = "tf32"  # the newer API: reading allow_tf32 would now raise
    assert triton_backend._tf32_allowed()
    tf32_state.fp32_precision = "ieee"
    assert not triton_backend._tf32_allowed()
    tf32_state.fp32_precision = "none"
    tf32_state.allow_tf32 = True
    assert triton_backend._tf32_allowed()
    tf32_state.allow_tf32 = False
    assert not triton_backend._tf32_allowed()


# ----------------------------------------------------------------------------- choice and cached launches

class FakeCompiled:
    """What Triton's launch returns: a compiled kernel, launched as ``compiled[grid](*values)``."""

    def __init__(self, log, candidate, fail=False):
        self.log, self.candidate, self.fail = log, candidate, fail

    def __getitem__(self, grid):
        def run(*values):
            if self.fail:
                raise TypeError("another calling convention")
            self.log.append(("direct", self.candidate, grid, values))
        return run


class FakeKernel:
    """A JIT function stand-in: ``kernel[grid](**named, num_warps=, num_stages=)`` logs and returns a compiled kernel."""
    arg_names = ["a_ptr", "N", "BLOCK_P"]

    def __init__(self, log, candidate, broken=False, direct_fails=False):
        self.log, self.candidate, self.broken, self.direct_fails = log, candidate, broken, direct_fails

    def __getitem__(self, grid):
        def run(**named):
            if self.broken:
                raise RuntimeError("out of resources: shared memory")
            self.log.append(("triton", self.candidate, grid, named["N"]))
            return FakeCompiled(self.log, self.candidate, self.direct_fails)
        return run


@pytest.fixture
def gpu_tuning(monkeypatch):
    """tuning.launch's GPU path with stand-ins: not interpreting, no capture (tests set the clock)."""
    monkeypatch.setattr(triton_configs, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    tuning.clear()
    direct = tuning.direct_launch()
    tuning.direct_launch(True)
    yield
    tuning.clear()
    tuning.direct_launch(direct)


CANDIDATES = tuple(triton_configs.Candidate("k", (("BLOCK_P", p),)) for p in (1, 2, 4))


def _launch(log, key, n, broken=(), direct_fails=False):
    kernels = {c: FakeKernel(log, c, c in broken, direct_fails) for c in CANDIDATES}
    tuning.launch("forward", key, CANDIDATES, kernels.__getitem__,
                  lambda c: dict(a_ptr=torch.zeros(4), N=n, BLOCK_P=c.block["BLOCK_P"]), lambda c: (7, 1))


def test_first_call_measures_every_candidate_then_launches_the_fastest_directly(gpu_tuning, monkeypatch):
    log = []

    def median(run):
        run()
        return {1: 3.0, 2: 1.0, 4: 2.0}[log[-1][1].block["BLOCK_P"]]
    monkeypatch.setattr(tuning, "_median_ms", median)
    _launch(log, ("key",), 32, broken=(CANDIDATES[2],))
    timed = tuning.timings()[str(("key",))]
    assert [timed[str(c)] for c in CANDIDATES[:2]] == [3.0, 1.0]
    assert timed[str(CANDIDATES[2])].startswith("RuntimeError: out of resources")  # skipped, with its error
    assert tuning.chosen() == {str(("key",)): str(CANDIDATES[1])}
    assert tuning.stats["tuned"] == 1 and log[-1][:2] == ("triton", CANDIDATES[1])  # compiled by Triton's launch
    log.clear()
    _launch(log, ("key",), 48)  # same bucket, same specialization (48 % 16 == 0): the compiled kernel
    assert log == [("direct", CANDIDATES[1], (7, 1), log[0][3])] and tuning.stats["direct"] == 1
    a_ptr, n, block = log[0][3]
    assert n == 48 and block == 2 and a_ptr.shape == (4,)  # every argument, in the kernel's order
    log.clear()
    _launch(log, ("key",), 33)  # 33 is not a multiple of 16: another specialization, through Triton
    assert log == [("triton", CANDIDATES[1], (7, 1), 33)] and tuning.stats["cached"] == 2


def test_a_direct_launch_that_fails_falls_back_to_triton_for_good(gpu_tuning, monkeypatch):
    log = []
    monkeypatch.setattr(tuning, "_median_ms", lambda run: (run(), 1.0)[1])
    _launch(log, ("k2",), 16, direct_fails=True)
    log.clear()
    _launch(log, ("k2",), 16, direct_fails=True)
    assert log == [("triton", CANDIDATES[0], (7, 1), 16)]
    assert tuning.stats["fallback"] == 1 and not tuning.direct_launch()


def test_nothing_is_measured_or_cached_during_capture(gpu_tuning, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(tuning, "_median_ms", lambda run: pytest.fail("measured during capture"))
    log = []
    _launch(log, ("k3",), 16)
    assert log == [("triton", CANDIDATES[0], (7, 1), 16)]  # the default candidate
    assert tuning.chosen() == {} and tuning.stats["unmeasured"] == 1


def test_interpreted_launches_use_the_forced_or_fixed_configuration():
    tuning.clear()
    layer = unshared.LocallyConnected1d(3, 2, 3, input_size=7, backend="triton", dtype=torch.float64)
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    first = layer(x)
    single = triton_configs.Candidate("forward_kernel", (("BLOCK_P", 1), ("BLOCK_N", 16), ("BLOCK_O", 16),
                                                         ("BLOCK_R", 32)))
    with tuning.forcing("forward", single):
        torch.testing.assert_close(layer(x), first)
    assert tuning.stats["unmeasured"] == 2 and tuning.chosen() == {}


def test_candidates_are_chosen_by_the_narrow_side():
    wide, poor = triton_configs.candidates("forward", 16, 144), triton_configs.candidates("input_grad", 3, 147)
    assert not any(c.small for c in wide) and wide == triton_configs.FORWARD
    assert poor[0].small and poor[0].kernel == "input_grad_kernel" and poor[0].block["BLOCK_C"] == 4
    assert set(poor[2:]) == set(triton_configs.INPUT_GRAD)  # tensor cores stay candidates
    wg = triton_configs.small_candidates("weight_grad", 1, 10)[0]
    assert wg.block["BLOCK_R"] == 16 and wg.block["BLOCK_O"] == 1


def test_the_key_buckets_the_batch():
    g = unshared._utils.Geometry((9,), (7,), (3,), (1,), ((0, 0),), (1,), 1, 2, 4)
    key = lambda n: triton_backend._key("forward", g, n, torch.float32, True, torch.device("cpu"))  # noqa: E731
    assert key(33) == key(64) != key(65)
    assert key(64) != triton_backend._key("forward", g, 64, torch.float32, False, torch.device("cpu"))
    assert key(64) != triton_backend._key("forward", g, 64, torch.bfloat16, True, torch.device("cpu"))


# ----------------------------------------------------------------------------- CUDA graphs

def _layer_and_input(backend):
    torch.manual_seed(0)
    layer = unshared.LocallyConnected2d(8, 8, 3, padding=1, input_size=10, device="cuda", backend=backend)
    return layer, torch.randn(4, 8, 10, 10, device="cuda", requires_grad=True)


@requires_cuda
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_forward_and_backward_under_cuda_graph_capture_match_eager(backend):
    layer, x = _layer_and_input(backend)
    y = layer(x)
    gx, gw = torch.autograd.grad(y.square().sum(), (x, layer.weight))  # eager, and the warm-up
    static_x = x.detach().clone().requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on the capture stream, as PyTorch's docs do
        layer(static_x).square().sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    layer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = layer(static_x)
        static_gx, static_gw = torch.autograd.grad(static_y.square().sum(), (static_x, layer.weight))
    static_x.data.copy_(x.detach())
    graph.replay()
    torch.testing.assert_close(static_y, y)
    torch.testing.assert_close(static_gx, gx)
    torch.testing.assert_close(static_gw, gw)


@requires_cuda
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_torch_compile_reduce_overhead_matches_eager(backend):
    layer, x = _layer_and_input(backend)
    expected = layer(x)
    gx, gw = torch.autograd.grad(expected.square().sum(), (x, layer.weight))
    step = torch.compile(lambda t: layer(t).square().sum(), mode="reduce-overhead")
    for _ in range(3):  # recording, then replays
        loss = step(x)
        got = torch.autograd.grad(loss, (x, layer.weight))
    torch.testing.assert_close(loss, expected.square().sum())
    torch.testing.assert_close(got[0], gx)
    torch.testing.assert_close(got[1], gw)


# ----------------------------------------------------------------------------- backend choice and refusals

def test_auto_takes_the_cpu_kernels_on_cpu_and_triton_on_cuda():
    x, w = torch.randn(1, 2, 5), torch.randn(3, 4, 2, 3)
    g = unshared._utils.Geometry((5,), (3,), (3,), (1,), ((0, 0),), (1,), 1, 2, 4)
    assert choose_backend(x, w, g, "auto") == CPU_AUTO
    if CUDA:  # measured inside the operator, or Triton when measuring is off
        assert choose_backend(x.cuda(), w.cuda(), g, "auto") == ("auto" if selection.measuring() else "triton")


def test_explicit_triton_that_cannot_run_says_why(monkeypatch):
    x, w = torch.randn(1, 2, 5), torch.randn(3, 4, 2, 3)
    monkeypatch.setattr(triton_configs, "interpreting", lambda: False)
    with pytest.raises(ValueError, match=r"backend='triton' cannot compute this call: the input is on cpu"):
        UF.locally_connected1d(x, w, backend="triton")
    monkeypatch.setattr(triton_backend, "TRITON_INSTALLED", False)
    with pytest.raises(ValueError, match=r"Triton is not installed \(pip install triton"):
        UF.locally_connected1d(x, w, backend="triton")


def test_import_unshared_does_not_import_triton():
    # (calling any torch.library op imports torch._dynamo, which imports Triton when installed:
    # that is PyTorch's doing; our kernels module must still stay unloaded on the PyTorch path)
    code = ("import sys, unshared, torch; print('triton' in sys.modules); "
            "unshared.LocallyConnected1d(1, 1, 1, input_size=3)(torch.ones(1, 1, 3)); "
            "print('unshared.backends.triton.kernels' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "TRITON_INTERPRET": "0"})
    assert out.stdout.split() == ["False", "False"]


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
    # can_run counts the programs of the candidates; shapes on the meta device cost nothing
    g = unshared._utils.Geometry((4096, 4096, 4096), (4096, 4096, 4096), (1, 1, 1), (1, 1, 1), ((0, 0),) * 3,
                                 (1, 1, 1), 1, 64, 64)
    x = torch.empty(1, 64, 1, 1, 1, device=DEVICE).expand(1 << 20, -1, -1, -1, -1)  # only its sizes matter
    reason = triton_backend.can_run(x, None, g)
    assert reason is not None and "more than a CUDA grid holds" in reason


@triton.jit
def _bank_offset_probe(out_ptr, bank, G, Og, R):
    tl.store(out_ptr, triton_common.bank_offset(tl.full((), bank, tl.int64), G, Og, R))


def test_bank_offsets_are_int64_past_two_to_the_31():
    # the weight offset of a bank is bank * G * Og * R; as an int32 product (G * Og * R first) it
    # wraps past 2^31 elements. The helper the kernels use, in a kernel of its own:
    out = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    _bank_offset_probe[(1,)](out, 3, 2, 1 << 15, 1 << 16)
    assert out.item() == 3 * 2 * (1 << 15) * (1 << 16)  # 3 * 2^32: past int32


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
