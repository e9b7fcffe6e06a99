"""The compiled CPU backend (``backend="cpu"``, csrc/) against the float64 reference: every
instruction-set path, both weight layouts, banks, threads, torch.compile, and its absence."""
import os
import shutil
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import unshared
import unshared.functional as UF
from configs import Config, configs
from conftest import EXAMPLES_SCALE
from reference import locally_connected_reference
from test_functional import FN, check_against_reference
from unshared._utils import Geometry
from unshared.backends import choose_backend, cpu

BUILT = cpu.available_isas() != ()
requires_kernels = pytest.mark.skipif(not BUILT, reason=f"the compiled CPU kernels are not built: {cpu._REASON}")
ISAS = [pytest.param(isa, marks=pytest.mark.skipif(isa not in cpu.available_isas(), reason=f"this CPU lacks {isa}"))
        for isa in cpu.ISAS]


def test_kernels_are_built_in_ci():
    # CI installs from scratch with gcc: a silently skipped build would skip every test below
    if os.environ.get("CI") and not BUILT:
        pytest.fail(f"CI must build the compiled CPU kernels: {cpu._REASON}")


@requires_kernels
@settings(max_examples=1000 * EXAMPLES_SCALE)
@given(cfg=configs())
def test_float64_matches_reference(cfg):
    check_against_reference(cfg, torch.float64, seed=20, backend="cpu")


@requires_kernels
@settings(max_examples=300 * EXAMPLES_SCALE)
@given(cfg=configs(max_batch=2))
def test_float32_matches_reference(cfg):
    check_against_reference(cfg, torch.float32, seed=21, backend="cpu")


# Sizes past the vector width and the register tiles (the random configurations are tiny): full and
# partial vector chunks, merged kernel rows (groups 1) and per-offset runs (groups, dilation),
# batches that take 1, 2 and 4 batch vectors and both vector widths of the input gradient; channel-major
# batches small enough for the forward with vectors along the batch (kernels_fwd_batch.h).
MEDIUM = [
    Config(2, 16, 16, (5, 5), (1, 1), 0, (1, 1), 1, "zeros", (9, 9), 9, None, "contiguous", True),
    Config(2, 16, 5, (3, 4), (2, 1), (1, 2), (1, 1), 1, "zeros", (8, 9), 70, "position", "channels_last", True),
    Config(2, 20, 16, (3, 3), (1, 1), 1, (1, 1), 1, "zeros", (6, 7), 33, None, "contiguous", False),
    Config(2, 24, 12, (3, 3), (1, 2), 2, (2, 1), 2, "zeros", (7, 8), 17, "shared", "noncontiguous", True),
    Config(1, 19, 18, (7,), (3,), 3, (2,), 1, "zeros", (31,), 5, None, "contiguous", False),
    Config(3, 16, 4, (2, 3, 2), (1, 1, 2), 1, (1, 1, 1), 1, "zeros", (3, 5, 6), 40, None, "channels_last", True),
    Config(2, 3, 16, (5, 5), (1, 1), 2, (1, 1), 1, "zeros", (7, 7), 1, None, "contiguous", True),
    Config(2, 32, 12, (3, 3), (2, 1), 1, (1, 2), 2, "zeros", (9, 8), 2, "position", "channels_last", False),
    Config(3, 18, 20, (2, 3, 2), (1, 1, 1), (0, 1, 1), (1, 1, 1), 1, "zeros", (3, 4, 5), 8, None, "noncontiguous", False),
]
MEDIUM_IDS = ["deepface-like", "batch70-channels-last", "channel-major-batch33", "groups-dilation",
              "1d-stride3", "3d-batch40", "rgb-batch1", "channel-major-batch2", "channel-major-3d-batch8"]


@requires_kernels
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cfg", MEDIUM, ids=MEDIUM_IDS)
def test_every_instruction_set_matches_reference(isa, cfg):
    with cpu.use_isa(isa):
        check_against_reference(cfg, torch.float64, seed=22, backend="cpu")
        check_against_reference(cfg, torch.float32, seed=23, backend="cpu")


@st.composite
def wide_configs(draw):
    """2d layers with channels past the vector width (the random configurations stay narrower)."""
    groups = draw(st.sampled_from([1, 1, 2]))
    cg, og = draw(st.sampled_from([7, 16, 17, 32])), draw(st.integers(1, 18))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    size = tuple(max(d * (k - 1) + 1 - 2 * p, 1) + draw(st.integers(0, 4))
                 for k, d, p in zip(kernel, dilation, padding))
    return Config(2, groups * cg, groups * og, kernel, stride, padding, dilation, groups, "zeros", size,
                  draw(st.integers(1, 40)), draw(st.sampled_from(["position", None])),
                  draw(st.sampled_from(["contiguous", "noncontiguous", "channels_last"])), draw(st.booleans()))


@requires_kernels
@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=200 * EXAMPLES_SCALE)
@given(cfg=st.one_of(configs(), wide_configs()))
def test_every_instruction_set_on_random_configurations(isa, cfg):
    with cpu.use_isa(isa):
        check_against_reference(cfg, torch.float64, seed=24, backend="cpu")


# The gather input gradient (kernel-major filters) splits an input position's (pair, output
# channel) products into blocks whose output-gradient vectors stay in L1, keeping its sums between
# them (kernels_ig.h): whole pairs per block at these 40 channels, ranges of one pair's 300.
@requires_kernels
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("out_channels", [40, 300])
@pytest.mark.parametrize("batch", [3, 20])
def test_input_grad_of_many_products_in_blocks(isa, out_channels, batch):
    cfg = Config(2, 5, out_channels, (3, 3), (1, 1), 1, (1, 1), 1, "zeros", (4, 5), batch, None, "contiguous", True)
    with cpu.use_isa(isa):
        check_against_reference(cfg, torch.float64, seed=29, backend="cpu")
        check_against_reference(cfg, torch.float32, seed=30, backend="cpu")


# The input gradient of channel-major filters is a scatter (csrc/kernels_ig_scatter.h) over items of
# channel and sample blocks, the sample blocks halved while an item's buffer passes 8 MiB; where even
# one channel and one vector of samples would pass 64 MiB, the gather runs instead.
@requires_kernels
def test_channel_major_input_grad_in_several_sample_blocks():
    # 1100 inputs x 1000 samples x 8 bytes = 8.8 MB: two blocks of 500 samples (stride 2: not the rows path)
    cfg = Config(1, 1, 3, (5,), (2,), 0, (1,), 1, "zeros", (1100,), 1000, None, "contiguous", False)
    check_against_reference(cfg, torch.float64, seed=28, backend="cpu")


@requires_kernels
def test_channel_major_input_grad_past_the_scatter_buffer_limit():
    # 1.1 million inputs x 8 lanes x 8 bytes > 64 MiB: the gather (the reference's loops would take minutes)
    x = torch.randn(1, 1, 1_100_001, dtype=torch.float64, requires_grad=True)
    w = torch.randn(550_000, 2, 1, 3, dtype=torch.float64)
    y = UF.locally_connected1d(x, w, stride=2, backend="cpu")
    want = UF.locally_connected1d(x, w, stride=2, backend="torch")
    gy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(want, x, gy)[0])


@requires_kernels
def test_an_expanded_output_gradient_reaches_the_kernels_as_a_copy(monkeypatch):
    # y.sum()'s gradient is expanded (all strides 0): the rows path would read it lane by lane
    seen, launch = [], cpu._launch

    def spy(op, g, n, x, y, w, kernel_major, state):
        seen.append((op, y.stride()))
        return launch(op, g, n, x, y, w, kernel_major, state)

    monkeypatch.setattr(cpu, "_launch", spy)
    layer = unshared.LocallyConnected1d(1, 2, 5, input_size=40, backend="cpu", dtype=torch.float64)
    x = torch.randn(3, 1, 40, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    assert sorted(op for op, _ in seen) == ["forward", "input_grad", "weight_grad"]
    assert all(0 not in strides for _, strides in seen), seen
    want = locally_connected_reference(x, layer.weight, layer.bias)
    gx, gw = torch.autograd.grad(want, (x, layer.weight), torch.ones_like(want))
    torch.testing.assert_close(x.grad, gx)
    torch.testing.assert_close(layer.weight.grad, gw)


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_portable_only_build_as_on_other_cpus(tmp_path, monkeypatch):
    # what other CPUs (aarch64) build: no x86 kernels; compiled here with LC_PORTABLE_ONLY
    monkeypatch.delenv("UNSHARED_CPU_ISA", raising=False)  # the caller's choice is not this build's
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    library = tmp_path / "portable_only.so"
    subprocess.run(["cc", "-O2", "-std=gnu11", "-fPIC", "-shared", "-DLC_PORTABLE_ONLY", "-o", str(library),
                    *map(str, sorted(csrc.glob("*.c"))), "-pthread"], check=True)
    monkeypatch.setattr(cpu, "library_path", lambda: library)
    lib, reason = cpu._load()
    assert reason is None
    monkeypatch.setattr(cpu, "_LIB", lib)
    assert cpu.available_isas() == ("portable",)
    check_against_reference(MEDIUM[1], torch.float64, seed=26, backend="cpu")
    check_against_reference(MEDIUM[3], torch.float32, seed=27, backend="cpu")


@requires_kernels
def test_instruction_set_is_chosen_and_forced(monkeypatch):
    monkeypatch.delenv("UNSHARED_CPU_ISA", raising=False)  # the default, whatever the caller set
    assert "portable" in cpu.available_isas()
    assert cpu.current_isa() == cpu.available_isas()[-1]  # the best by default
    with cpu.use_isa("portable"):
        assert cpu.current_isa() == "portable"
    with pytest.raises(ValueError, match=r"isa must be one of \('portable', 'avx2', 'avx512'\), got isa='sse'"):
        with cpu.use_isa("sse"):
            pass
    for isa in set(cpu.ISAS) - set(cpu.available_isas()):
        with pytest.raises(ValueError, match=f"cannot use isa='{isa}' here: this CPU runs"):
            with cpu.use_isa(isa):
                pass


@requires_kernels
def test_these_tests_pass_whatever_instruction_set_the_caller_sets():
    # tests that check the default choice (or build their own library) must not inherit the caller's
    # UNSHARED_CPU_ISA: the worst and the best instruction set, each set for the whole run
    for isa in sorted({"portable", cpu.available_isas()[-1]}):
        env = {**os.environ, "UNSHARED_CPU_ISA": isa}
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                              "chosen_and_forced or portable_only_build"], env=env, capture_output=True, text=True,
                             timeout=600, cwd=Path(__file__).parent)
        assert run.returncode == 0 and "2 passed" in run.stdout, (isa, run.stdout[-3000:])


@requires_kernels
def test_instruction_set_from_the_environment(monkeypatch):
    monkeypatch.setenv("UNSHARED_CPU_ISA", "portable")
    assert cpu.current_isa() == "portable"
    x, w = torch.randn(2, 3, 9, dtype=torch.float64), torch.randn(7, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(UF.locally_connected1d(x, w, backend="cpu"), locally_connected_reference(x, w))
    monkeypatch.setenv("UNSHARED_CPU_ISA", "neon")
    with pytest.raises(ValueError, match=r"cannot use isa='neon' here: this CPU runs \('portable'"):
        UF.locally_connected1d(x, w, backend="cpu")


@requires_kernels
@pytest.mark.parametrize("cfg", [
    Config(2, 2, 2, (2, 3), (1, 2), 1, (1, 1), 1, "zeros", (3, 5), 2, "position", "noncontiguous"),
    Config(2, 4, 4, (2, 2), (2, 2), 1, (1, 1), 2, "circular", (3, 3), 2, "shared", "channels_last", True),
    Config(1, 3, 2, (3,), (1,), 2, (2,), 1, "zeros", (4,), 3, None, "contiguous", True),
], ids=["plain", "groups", "1d-dilation"])
def test_gradcheck_and_gradgradcheck(cfg):
    x, w, b = cfg.tensors(requires_grad=True)
    inputs = (x, w) if b is None else (x, w, b)
    fn = lambda *t: FN[cfg.nd](*t, **cfg.kwargs(), backend="cpu")  # noqa: E731
    assert gradcheck(fn, inputs, fast_mode=True)
    assert gradgradcheck(fn, inputs, fast_mode=True)


@requires_kernels
def test_batch_zero_and_layouts_of_the_results():
    layer = unshared.LocallyConnected2d(4, 6, 3, padding=1, input_size=(5, 6), backend="cpu")
    x = torch.randn(0, 4, 5, 6, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 6, 5, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(layer.weight.grad, torch.zeros_like(layer.weight))
    x = torch.randn(2, 4, 5, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.randn_like(y))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


@requires_kernels
def test_gradients_of_a_sum_read_the_broadcast_output_gradient():
    # y.sum().backward() hands the kernels an expanded grad_output (every stride 0)
    layer = unshared.LocallyConnected2d(5, 7, 3, 2, 1, input_size=(9, 8), dtype=torch.float64, backend="cpu")
    x = torch.randn(6, 5, 9, 8, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(layer(x).sum(), (x, layer.weight))
    y = UF.locally_connected2d(x, layer.weight, layer.bias, 2, 1, backend="torch")
    for a, b in zip(got, torch.autograd.grad(y.sum(), (x, layer.weight))):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not BUILT or not os.path.exists("/proc/self/maps"), reason="needs the kernels and Linux")
def test_no_second_openmp_runtime_is_loaded():
    # the kernels use their own threads: the only OpenMP runtime in a process that uses them stays
    # PyTorch's (checked in a fresh process: other tests load libraries that bring their own)
    code = """if True:
        import torch, unshared.functional as UF
        from unshared.backends import cpu
        UF.locally_connected1d(torch.randn(2, 3, 9), torch.randn(7, 4, 3, 3), backend="cpu")
        maps = open("/proc/self/maps").read()
        assert str(cpu.library_path()) in maps
        import json
        print(json.dumps(sorted({line.split()[-1] for line in maps.splitlines()
                                 if "gomp" in line or "libomp" in line or "iomp" in line})))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    runtimes = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(runtimes) <= 1, runtimes


@requires_kernels
def test_threads_and_serial_give_the_same_results():
    # several Python threads call one layer at once (the kernels start their own threads too)
    torch.manual_seed(0)
    layer = unshared.LocallyConnected2d(16, 8, 5, padding=2, input_size=(11, 10), backend="cpu")
    xs = [torch.randn(9, 16, 11, 10, requires_grad=True) for _ in range(6)]

    def step(x):
        y = layer(x)
        gx, gw = torch.autograd.grad(y.square().sum(), (x, layer.weight))
        return y.detach(), gx, gw

    expected = [step(x) for x in xs]
    results = [None] * len(xs)

    def work(i):
        for _ in range(3):
            results[i] = step(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        for a, b in zip(got, want):
            assert torch.equal(a, b)  # each output is computed by one thread in a fixed order
    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for a, b in zip(step(xs[0]), expected[0]):
            assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads_before)


@requires_kernels
def test_compiles_fullgraph():
    layer = unshared.LocallyConnected2d(3, 4, 3, padding=1, input_size=(5, 6), backend="cpu", dtype=torch.float64)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    grads = torch.autograd.grad(y.square().sum(), (x, layer.weight))
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    yc = compiled(x)
    grads_c = torch.autograd.grad(yc.square().sum(), (x, layer.weight))
    torch.testing.assert_close(yc, y)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b)


@requires_kernels
def test_auto_picks_the_kernels_and_leaves_half_precision_to_pytorch():
    g = Geometry((5,), (3,), (3,), (1,), ((0, 0),), (1,), 1, 2, 4)
    x, w = torch.randn(1, 2, 5), torch.randn(3, 4, 2, 3)
    assert choose_backend(x, w, g) == "cpu"
    assert choose_backend(x.double(), w.double(), g) == "cpu"
    assert choose_backend(x.bfloat16(), w.bfloat16(), g) == "torch"
    with pytest.raises(ValueError, match=r"backend='cpu' cannot compute this call: dtype torch.bfloat16 is not "
                                         r"supported by the compiled kernels"):
        UF.locally_connected1d(x.bfloat16(), w.bfloat16(), backend="cpu")


def test_without_the_library_auto_falls_back_and_explicit_says_why(monkeypatch):
    monkeypatch.setattr(cpu, "library_path", lambda: None)
    lib, reason = cpu._load()
    assert lib is None and "the compiled CPU kernels are not built" in reason and "C compiler" in reason
    monkeypatch.setattr(cpu, "_LIB", None)
    monkeypatch.setattr(cpu, "_REASON", reason)
    assert cpu.available_isas() == ()
    x, w = torch.randn(2, 2, 5), torch.randn(3, 4, 2, 3)
    g = Geometry((5,), (3,), (3,), (1,), ((0, 0),), (1,), 1, 2, 4)
    assert choose_backend(x, w, g) == "torch"
    torch.testing.assert_close(UF.locally_connected1d(x, w), locally_connected_reference(x, w).float())
    with pytest.raises(ValueError, match=r"backend='cpu' cannot compute this call: the compiled CPU kernels are "
                                         r"not built.*a C compiler is needed at install time"):
        UF.locally_connected1d(x, w, backend="cpu")


def test_a_library_from_other_sources_is_refused(monkeypatch, tmp_path):
    # a stale build (another ABI) is not loaded: the backend says so instead of crashing
    class Stale:
        def unshared_abi_version(self):
            return cpu.ABI_VERSION + 1

    monkeypatch.setattr(cpu, "library_path", lambda: tmp_path / "_cpu_kernels.so")
    monkeypatch.setattr(cpu.ctypes, "CDLL", lambda path: Stale())
    lib, reason = cpu._load()
    assert lib is None and "were built from other sources" in reason


@requires_kernels
def test_the_kernels_run_on_pytorchs_openmp_team_and_both_pools_agree(monkeypatch):
    # the default pool is the OpenMP runtime PyTorch loaded (its parallel backend here is OpenMP)
    if "OpenMP" in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]:
        assert cpu.thread_pool() == "openmp"
    monkeypatch.setattr(cpu, "SERIAL_BELOW", 0)
    layer = unshared.LocallyConnected2d(3, 5, 3, input_size=9, backend="cpu", dtype=torch.float64)
    x = torch.randn(6, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    results = {}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for pool in cpu.THREAD_POOLS:
            with cpu.use_thread_pool(pool) as used:
                assert used == pool or (pool == "openmp" and used == "pthreads")  # no OpenMP runtime loaded
                y = layer(x)
                results[pool] = (y, *torch.autograd.grad(y.square().sum(), (x, layer.weight)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results.values()):
        assert torch.equal(a, b)  # each item is computed by one thread in a fixed order
    want = locally_connected_reference(x, layer.weight, layer.bias)
    torch.testing.assert_close(results["openmp"][0], want)
    with pytest.raises(ValueError, match=r"pool must be one of \('pthreads', 'openmp'\), got pool='tbb'"):
        with cpu.use_thread_pool("tbb"):
            pass


@requires_kernels
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_forked_child_starts_threads_of_its_own():
    # libgomp is not fork-safe: a child must not wait on the team of workers it did not inherit
    cpu.thread_pool()  # the runtime looked up (and the fork handler registered) in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.write(write, cpu.thread_pool().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16).decode() == "pthreads"
    os.close(read)
    os.close(write)
