"""The backend layer without a GPU: the choice (explicit, auto, measured with stand-in backends),
the PyTorch backend's block plan per device type, the settings context manager, and the
per-bank convolution backend's refusals."""
import threading
import warnings

import pytest
import torch

import unshared
import unshared.functional as UF
from unshared import _utils as U
from unshared.backends import BACKENDS, choose_backend, selection, settings
from unshared.backends.blocks import CPU_BLOCK_ELEMENTS, GPU_BLOCK_ELEMENTS, block_plan, budget
from unshared.backends.settings import Settings, current_settings
from conftest import CPU_AUTO
from reference import locally_connected_reference


def geometry(n_out=(3,), banks=None, grid=None):
    return U.Geometry((n_out[0] + 2,), n_out, (3,), (1,), ((0, 0),), (1,), 1, 2, 4, grid, banks)


# ----------------------------------------------------------------------------- measured choice

class StandIn:
    """A backend whose stages take a fixed (fake) time, or raise."""

    def __init__(self, name, seconds, fails=False):
        self.name, self.seconds, self.fails, self.calls = name, seconds, fails, 0

    def can_run(self, x, w, g):
        return None

    def _stage(self):
        self.calls += 1
        if self.fails:
            raise RuntimeError(f"{self.name} failed to compile")
        return self.seconds

    def forward(self, x, w, g):
        return self._stage()

    def input_grad(self, gy, w, g, fmt):
        return self._stage()

    def weight_grad(self, x, gy, g, kernel_major):
        return 0.0


def fake_timer(call, device):
    out = call()
    return out if not isinstance(out, tuple) else sum(out)


@pytest.fixture(autouse=True)
def fresh_choices():
    selection.clear_choices()
    yield
    selection.clear_choices()


def test_fastest_is_a_pure_function_of_the_times():
    assert selection.fastest({"triton": 2.0, "torch": 1.0}) == ("torch", {})
    assert selection.fastest({"triton": 1.0, "torch": 1.0})[0] == "triton"  # ties: the first
    name, failures = selection.fastest({"triton": RuntimeError("no ptxas"), "torch": 5.0})
    assert name == "torch" and failures == {"triton": "RuntimeError: no ptxas"}
    with pytest.raises(RuntimeError, match="every backend failed"):
        selection.fastest({"triton": ValueError("a"), "torch": ValueError("b")})


def test_measured_choice_is_kept_per_key_and_stage(measuring_on):
    backends = {"triton": StandIn("triton", 2.0), "torch": StandIn("torch", 1.0)}
    x, w, g = torch.randn(5, 2, 5), torch.randn(3, 4, 2, 3), geometry()
    assert selection.resolve(x, w, g, "forward", backends, fake_timer) == "torch"
    calls = backends["torch"].calls
    for n in (5, 6, 7, 8):  # the same batch bucket: remembered, not measured again
        assert selection.resolve(torch.randn(n, 2, 5), w, g, "forward", backends, fake_timer) == "torch"
    assert backends["torch"].calls == calls
    backends["torch"].seconds = 3.0  # a new bucket measures again
    assert selection.resolve(torch.randn(9, 2, 5), w, g, "forward", backends, fake_timer) == "triton"
    assert selection.resolve(x, w, g, "backward", backends, fake_timer) == "triton"
    assert len(selection.choices()) == 3
    selection.clear_choices()
    assert selection.choices() == {}


def test_a_failing_candidate_is_dropped_with_one_warning(measuring_on):
    backends = {"triton": StandIn("triton", 0.1, fails=True), "torch": StandIn("torch", 1.0)}
    x, w = torch.randn(2, 2, 5), torch.randn(3, 4, 2, 3)
    selection._warned.discard("triton")
    with pytest.warns(RuntimeWarning, match="does not use the triton backend, which failed: RuntimeError"):
        assert selection.resolve(x, w, geometry(), "forward", backends, fake_timer) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert selection.resolve(x, w, geometry((4,)), "forward", backends, fake_timer) == "torch"


def test_measuring_off_means_the_first_candidate():
    # the switch is restored after the test by conftest's isolated_global_state
    backends = {"triton": StandIn("triton", 2.0), "torch": StandIn("torch", 1.0)}
    assert selection.measuring(False) is False
    assert selection.resolve(torch.randn(2, 2, 5), torch.randn(3, 4, 2, 3), geometry(), "forward",
                             backends, fake_timer) == "triton"
    assert backends["triton"].calls == backends["torch"].calls == 0


def test_auto_on_the_cpu_never_measures():
    x, w = torch.randn(2, 2, 5), torch.randn(3, 4, 2, 3)
    assert choose_backend(x, w, geometry()) == CPU_AUTO
    UF.locally_connected1d(x, w)
    assert selection.choices() == {}


# ----------------------------------------------------------------------------- explicit and auto

def test_explicit_backend_wins_and_says_why_it_cannot_run():
    x, w = torch.randn(2, 2, 5), torch.randn(3, 4, 2, 3)
    assert choose_backend(x, w, geometry(), "composite") == "composite"
    with pytest.raises(ValueError, match=r"backend='conv' cannot compute this call: every position has its own"):
        UF.locally_connected1d(x, w, backend="conv")


def test_explicit_backend_wins_for_every_layer_kind(monkeypatch):
    from unshared.backends.triton import configs
    monkeypatch.setattr(configs, "interpreting", lambda: False)  # as on a machine without the interpreter
    x = torch.randn(2, 3, 12, 12)
    for layer in (unshared.LowRankLocallyConnected2d(3, 4, 3, input_size=12, rank=2, backend="triton"),
                  unshared.TiledLocallyConnected2d(3, 4, 3, input_size=12, tile_size=2, backend="triton"),
                  unshared.LocallyConnectedTranspose2d(3, 4, 3, input_size=12, backend="triton")):
        with pytest.raises(ValueError, match="backend='triton' cannot compute this call: the input is on cpu"):
            layer(x)
    with pytest.raises(ValueError, match="backend='conv' cannot compute this call: every position has its own"):
        unshared.LocallyConnected2d(3, 4, 3, input_size=12, backend="conv")(x)
    assert unshared.TiledLocallyConnected2d(3, 4, 3, input_size=12, tile_size=2, backend="conv")(x).shape == \
        (2, 4, 10, 10)
    lowrank = unshared.LowRankLocallyConnected2d(3, 4, 3, input_size=12, rank=2, backend="torch", dtype=torch.float64)
    reference = unshared.LowRankLocallyConnected2d(3, 4, 3, input_size=12, rank=2, backend="conv", dtype=torch.float64)
    reference.load_state_dict(lowrank.state_dict())
    with torch.no_grad():
        for logits in lowrank.combining_logits:
            logits.normal_()
        reference.load_state_dict(lowrank.state_dict())
    x = x.double()
    torch.testing.assert_close(lowrank(x), reference(x))


def test_banks_run_as_convolutions_only_with_many_positions_per_bank():
    g = geometry((12,), banks=((0, 1) * 6,), grid=(2,))
    x, w = torch.randn(1, 2, 14), torch.randn(2, 4, 2, 3)
    assert choose_backend(x, w, g) == CPU_AUTO                  # 6 positions per bank < 64
    with settings(min_positions_per_conv=6):
        assert choose_backend(x, w, g) == "conv"
    uneven = geometry((3,), banks=((0, 1, 0),), grid=(2,))      # bank 1 alone, bank 0 at 0 and 2: fine
    assert BACKENDS["conv"].can_run(x, w, uneven) is None
    scattered = geometry((4,), banks=((0, 0, 1, 0),), grid=(2,))
    assert "not evenly spaced" in BACKENDS["conv"].can_run(x, w, scattered)


# ----------------------------------------------------------------------------- block plan

def test_block_plan_is_sized_per_device_type():
    g = U.Geometry((63, 63), (55, 55), (9, 9), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, 16, 16)
    cpu = block_plan(g, 256, budget("cpu", Settings()))
    gpu = block_plan(g, 256, budget("cuda", Settings()))
    assert budget("cpu", Settings()) == CPU_BLOCK_ELEMENTS and budget("cuda", Settings()) == GPU_BLOCK_ELEMENTS
    assert budget("cpu", Settings(), input_grad=True) == 8 * CPU_BLOCK_ELEMENTS
    assert budget("cuda", Settings(), input_grad=True) == GPU_BLOCK_ELEMENTS  # no CPU-cache factor on a GPU
    assert len(gpu) < 20 < len(cpu)
    for plan, elements in ((cpu, CPU_BLOCK_ELEMENTS), (gpu, GPU_BLOCK_ELEMENTS)):
        covered = set()
        for b in plan:
            rows = b.row1 - b.row0
            assert rows == 1 or rows * 55 * 16 * 81 * (b.batch1 - b.batch0) <= elements
            covered |= {(r, n) for r in range(b.row0, b.row1) for n in range(b.batch0, b.batch1)}
        assert covered == {(r, n) for r in range(55) for n in range(256)}


def test_gpu_blocks_are_large():
    g = U.Geometry((63, 63), (55, 55), (9, 9), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, 16, 16)
    plan = block_plan(g, 32, budget("cuda", Settings()))
    assert len(plan) == 2 and all(b.batch0 == 0 and b.batch1 == 32 for b in plan)


# ----------------------------------------------------------------------------- settings

def test_settings_are_scoped_validated_and_per_thread():
    assert current_settings() == Settings()
    with settings(block_elements=5, batch_inner_from=0) as inside:
        assert current_settings() is inside and inside.block_elements == 5
        seen = []
        thread = threading.Thread(target=lambda: seen.append(current_settings()))
        thread.start()
        thread.join()
        assert seen == [Settings()]  # other threads keep the defaults
    assert current_settings() == Settings()
    with pytest.raises(ValueError, match="block_elements must be positive"):
        Settings(block_elements=0)
    with pytest.raises(ValueError, match=r"batch_inner_from must be a non-negative int, got batch_inner_from=-1"):
        Settings(batch_inner_from=-1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_setting'"):
        with settings(no_such_setting=1):
            pass


def test_threads_with_their_own_block_sizes_match_the_reference():
    # block_elements is read by the PyTorch backend alone: each thread plans its blocks from its own
    # setting (from one output row of one sample per block to the whole call in one block)
    layer = unshared.LocallyConnected2d(3, 4, 3, padding=1, input_size=9, dtype=torch.float64, backend="torch")
    sizes = (1, 486, 972, 2430, 10**6)
    g = U.Geometry((11, 11), (9, 9), (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, 3, 4)
    assert [len(block_plan(g, 2, n)) for n in sizes] == [18, 9, 5, 2, 1]
    inputs = [torch.randn(2, 3, 9, 9, dtype=torch.float64) for _ in sizes]
    results = [None] * len(sizes)

    def work(i):
        with settings(block_elements=sizes[i]):
            x = inputs[i].clone().requires_grad_()
            y = layer(x)
            results[i] = (y, *torch.autograd.grad(y.square().sum(), (x, layer.weight)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, got in zip(inputs, results):
        x = x.clone().requires_grad_()
        w = layer.weight.detach().clone().requires_grad_()
        y = locally_connected_reference(x, w, layer.bias.detach(), padding=1)
        want = (y, *torch.autograd.grad(y.square().sum(), (x, w)))
        for ours, theirs in zip(got, want):
            torch.testing.assert_close(ours, theirs)


def test_auto_falls_back_to_the_pytorch_backend_when_a_kernel_fails(monkeypatch):
    # measuring off: auto means Triton; a Triton that fails at launch is replaced by the PyTorch
    # backend, with one warning, and remembered for the key
    from unshared.backends import registry

    class Broken:
        def can_run(self, x, w, g):
            return None

        def forward(self, x, w, g):
            raise RuntimeError("ptxas failed")

    monkeypatch.setitem(registry.BACKENDS, "triton", Broken())
    selection._warned.discard("triton")
    x, w = torch.randn(2, 2, 5, dtype=torch.float64), torch.randn(3, 4, 2, 3, dtype=torch.float64)
    g = geometry()
    selection.measuring(False)  # restored after the test by conftest's isolated_global_state
    with pytest.warns(RuntimeWarning, match="does not use the triton backend, which failed: RuntimeError: ptxas"):
        y = torch.ops.unshared.forward(x, w, g.encode(), "auto")
    torch.testing.assert_close(y, BACKENDS["torch"].forward(x, w, g))
    assert selection.choices() and set(selection.choices().values()) == {"torch"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.ops.unshared.forward(x, w, g.encode(), "auto")  # remembered: no second failure
    with pytest.raises(RuntimeError, match="ptxas failed"):  # an explicit backend raises
        torch.ops.unshared.forward(x, w, g.encode(), "triton")
