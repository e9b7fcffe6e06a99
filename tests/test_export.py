"""``torch.export``: the program records a backend-independent call (``backend="auto"``, chosen
when it runs), so it runs on another dtype; ``unshared.decompositions()`` turns it into standard
operators, and the saved decomposed program loads and runs without ``unshared``."""
import copy
import subprocess
import sys

import pytest
import torch

import unshared

from layer_kinds import make


def _unshared_calls(program):
    return [node for node in program.graph.nodes if node.op == "call_function" and "unshared" in str(node.target)]


@pytest.mark.parametrize("kind", ["1d", "2d", "3d", "transposed-2d", "tiled-kernels", "lazy-2d"])
def test_an_exported_program_records_auto_and_runs_in_bfloat16(kind):
    layer, inputs = make(kind)
    x = inputs(2)
    program = torch.export.export(copy.deepcopy(layer), (x,))  # (the program shares the parameters it exports)
    calls = _unshared_calls(program)
    assert calls and all(node.args[3] == "auto" for node in calls), [node.args for node in calls]
    torch.testing.assert_close(program.module()(x), layer(x))
    half = program.module().to(torch.bfloat16)  # the cpu kernels compute float32 and float64 only
    torch.testing.assert_close(half(x.bfloat16()).float(), layer(x), atol=0.1, rtol=0.05)


def test_an_explicit_backend_is_kept_in_the_program():
    layer = unshared.LocallyConnected1d(2, 3, 3, input_size=8, backend="torch")
    program = torch.export.export(layer, (torch.randn(2, 2, 8),))
    assert [node.args[3] for node in _unshared_calls(program)] == ["torch"]


@pytest.mark.parametrize("kind", ["1d", "2d", "3d", "transposed-1d", "transposed-2d", "low-rank"])
def test_decomposed_programs_are_standard_operators(kind):
    layer, inputs = make(kind)
    x = inputs(3)
    program = torch.export.export(layer, (x,)).run_decompositions(unshared.decompositions())
    assert not _unshared_calls(program)
    torch.testing.assert_close(program.module()(x), layer(x))


def test_the_decompositions_of_the_gradients_equal_the_operators():
    from unshared._utils import Geometry
    g = Geometry((7, 6), (3, 4), (3, 2), (2, 1), ((1, 1), (0, 1)), (1, 2), 2, 4, 6)
    x, gy = torch.randn(2, 4, 7, 6, dtype=torch.float64), torch.randn(2, 6, 3, 4, dtype=torch.float64)
    w = torch.randn(3, 4, 6, 2, 3, 2, dtype=torch.float64)
    table = unshared.decompositions()
    for kernel_major in (False, True):
        got = table[torch.ops.unshared.weight_grad.default](x, gy, g.encode(), "auto", kernel_major)
        want = torch.ops.unshared.weight_grad(x, gy, g.encode(), "torch", kernel_major)
        torch.testing.assert_close(got, want)
        assert got.stride() == want.stride()
    got = table[torch.ops.unshared.input_grad.default](gy, w, g.encode(), "auto", False)
    torch.testing.assert_close(got, torch.ops.unshared.input_grad(gy, w, g.encode(), "torch", False))


def test_shared_banks_do_not_decompose_and_say_how_to_export_them():
    layer, inputs = make("tiled-kernels")
    program = torch.export.export(layer, (inputs(2),))
    with pytest.raises(NotImplementedError, match="backend='composite'"):
        program.run_decompositions(unshared.decompositions())


# PyTorch's archive writer warns for every non-contiguous parameter (a channels-last nn.Conv2d's
# too); the default weight is a permuted view (kernel-major storage); the loaded program is checked
@pytest.mark.filterwarnings("ignore:No complete tensor found in the group:UserWarning")
def test_a_saved_decomposed_program_loads_without_unshared(tmp_path):
    layer = torch.nn.Sequential(unshared.LocallyConnected2d(3, 4, 3, input_size=8), torch.nn.ReLU(),
                                unshared.LocallyConnectedTranspose2d(4, 2, 3, input_size=6))
    x = torch.randn(2, 3, 8, 8)
    program = torch.export.export(layer, (x,)).run_decompositions(unshared.decompositions())
    torch.export.save(program, tmp_path / "net.pt2")
    torch.save((x, layer(x).detach()), tmp_path / "io.pt")
    script = ("import sys, torch\n"
              f"program = torch.export.load({str(tmp_path / 'net.pt2')!r})\n"
              f"x, y = torch.load({str(tmp_path / 'io.pt')!r})\n"
              "torch.testing.assert_close(program.module()(x), y)\n"
              "assert 'unshared' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
