"""The tools people point at a model: ``FlopCounterMode`` counts the layers like convolutions,
``torch.jit.trace`` records them (for any batch size), ``torch.jit.script`` says what to use
instead, and ``torch.compile`` compiles every layer kind without a warning."""
import io
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import unshared
from conftest import CPU_AUTO
from layer_kinds import KINDS, make
from unshared._utils import CONV_MODULES, CONV_TRANSPOSE_MODULES

PACKAGE = Path(unshared.__file__).parent
# torch.jit.trace/script/save/load are deprecated in PyTorch 2.13; they still work, and are tested here
pytestmark = pytest.mark.filterwarnings("ignore:`torch\\.jit\\.:DeprecationWarning")

# ----------------------------------------------------------------------------- FlopCounterMode


def flops(module, x, backward=False) -> int:
    x = x.detach().requires_grad_(backward)
    with FlopCounterMode(display=False) as counter:
        y = module(x)
        if backward:
            y.sum().backward()
    return counter.get_total_flops()


# (nd, in, out, kernel, stride, padding, dilation, groups, input_size)
SHAPES = [
    (1, 3, 5, 3, 2, 1, 1, 1, 11),
    (2, 4, 6, (3, 2), (2, 1), 1, 1, 1, (7, 8)),
    (2, 4, 6, 3, 1, 0, 2, 2, (9, 8)),
    (3, 4, 4, 2, 1, (1, 0, 1), 1, 2, (3, 4, 5)),
    (3, 2, 4, 2, 1, 0, 1, 2, (3, 3, 4)),
]


@pytest.mark.parametrize("backend", ["auto", "torch", "composite"])
@pytest.mark.parametrize("shape", SHAPES, ids=["1d-stride", "2d-padding", "2d-groups-dilation", "3d-groups", "3d-depthwise"])
def test_flops_equal_the_convolution_of_the_same_shapes(shape, backend):
    nd, c_in, c_out, k, s, p, d, g, size = shape
    local = unshared.LocallyConnected1d if nd == 1 else unshared.LocallyConnected2d if nd == 2 else unshared.LocallyConnected3d
    layer = local(c_in, c_out, k, s, p, d, g, input_size=size, backend=backend)
    conv = CONV_MODULES[nd](c_in, c_out, k, s, p, d, g)
    if backend == "composite" and c_in == g:
        pytest.skip("the composite backend's einsums are products, not matmuls, with one input channel per group")
    x = torch.randn(3, c_in, *((size,) if isinstance(size, int) else size))
    forward = flops(conv, x)
    assert forward > 0 and flops(layer, x) == forward
    # forward, input gradient and weight gradient: one forward's count each (PyTorch's own count
    # of a grouped convolution's weight gradient ignores the groups, so compare with 3 x forward)
    assert flops(layer, x, backward=True) == 3 * forward
    if g == 1:
        assert flops(conv, x, backward=True) == 3 * forward


@pytest.mark.parametrize("backend", ["auto", CPU_AUTO, "composite"])
def test_flops_of_shared_banks_and_transposed_layers(backend):
    x = torch.randn(2, 3, 16, 16)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    for tile in (2, (3, 5)):  # "auto": convolutions per bank for 2, the kernels for (3, 5)
        tiled = unshared.TiledLocallyConnected2d(3, 4, 3, padding=1, input_size=16, tile_size=tile, backend=backend)
        assert flops(tiled, x) == flops(conv, x)
        assert flops(tiled, x, backward=True) == flops(conv, x, backward=True) == 3 * flops(conv, x)
    up = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
    local_up = unshared.LocallyConnectedTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1, input_size=16,
                                                    backend=backend)
    assert flops(local_up, x) == flops(up, x) > 0
    assert flops(local_up, x, backward=True) == flops(up, x, backward=True) == 3 * flops(up, x)


def test_flops_of_a_low_rank_layer_are_its_convolution_with_rank_times_the_filters():
    x = torch.randn(2, 3, 10, 10)
    layer = unshared.LowRankLocallyConnected2d(3, 4, 3, input_size=10, rank=3)
    conv = nn.Conv2d(3, 4, 3)
    assert flops(layer, x) == 3 * flops(conv, x)


def test_flops_of_a_network_by_module():
    net = nn.Sequential(unshared.LocallyConnected2d(3, 4, 3, input_size=8), nn.ReLU(),
                        unshared.LocallyConnected2d(4, 2, 3, input_size=6))
    x = torch.randn(2, 3, 8, 8)
    with FlopCounterMode(display=False) as counter:
        net(x)
    by_module = counter.get_flop_counts()
    first, second = 2 * 2 * 36 * 4 * 3 * 9, 2 * 2 * 16 * 2 * 4 * 9
    assert by_module["Sequential.0"][torch.ops.unshared.forward] == first
    assert by_module["Sequential.2"][torch.ops.unshared.forward] == second
    assert counter.get_total_flops() == first + second


@pytest.mark.parametrize("counter_first", [False, True])
def test_flops_counted_whichever_is_imported_first(counter_first):
    # import unshared leaves torch.utils.flop_counter (which imports Triton) alone and registers
    # the formulas when it is imported; imported before, it registers them at once
    imports = ["import torch.utils.flop_counter", "import unshared"]
    code = "; ".join([*(imports if counter_first else imports[::-1]),
                      "import sys, torch",
                      "print('torch.utils.flop_counter' in sys.modules)",
                      "from torch.utils.flop_counter import FlopCounterMode",
                      "layer = unshared.LocallyConnected2d(4, 4, 3, input_size=6)",
                      "counter = FlopCounterMode(display=False)",
                      "exec('with counter: layer(torch.randn(2, 4, 6, 6, requires_grad=True)).sum().backward()')",
                      "print(counter.get_total_flops())"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", str(3 * 2 * 2 * 16 * 4 * 4 * 9)]


def test_import_unshared_leaves_the_flop_counter_unloaded():
    code = "import sys, unshared; print('torch.utils.flop_counter' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False"]


# ----------------------------------------------------------------------------- torch.jit


def _unshared_warnings(caught) -> list[str]:
    return [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if Path(w.filename).is_relative_to(PACKAGE)]


@pytest.mark.parametrize("kind", KINDS)
def test_jit_trace_records_standard_operators_for_any_batch_size(kind):
    layer, inputs = make(kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(layer, inputs(2))
    assert _unshared_warnings(caught) == []
    graph = traced.inlined_graph
    assert "unshared::" not in str(graph)  # a self-contained graph: loads without unshared
    # sizes the weight fixes are constants: the batch size is the only size the graph reads
    assert [n.kind() for n in graph.nodes()].count("aten::size") <= 1, graph
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for batch in (1, 5):
        x = inputs(batch).requires_grad_()
        want = layer(x)
        (gx,) = torch.autograd.grad(want.square().sum(), x)
        for module in (traced, loaded):
            got = module(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(torch.autograd.grad(got.square().sum(), x)[0], gx, rtol=1e-5, atol=1e-5)
    # the weight gradients flow through the traced graph to the layer's parameters
    x = inputs(3)
    traced(x).square().sum().backward()
    traced_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer(x).square().sum().backward()
    for got, want in zip(traced_grads, layer.parameters()):
        torch.testing.assert_close(got, want.grad, rtol=1e-5, atol=1e-5)


def test_jit_trace_with_a_backend_that_only_the_custom_operator_runs_says_what_works():
    layer = unshared.LocallyConnected2d(2, 3, 3, input_size=5, backend="torch")
    with pytest.raises(ValueError, match="torch.jit.trace records standard operators only.*'composite'"):
        torch.jit.trace(layer, torch.randn(2, 2, 5, 5))
    composite = unshared.LocallyConnected2d(2, 3, 3, input_size=5, backend="composite")
    x = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(torch.jit.trace(composite, x)(x), composite(x))


@pytest.mark.parametrize("kind", KINDS)
def test_jit_script_names_the_supported_ways(kind):
    layer, _ = make(kind)
    with pytest.raises(RuntimeError, match="cannot be compiled by torch.jit.script; use torch.compile.*torch.export"):
        torch.jit.script(nn.Sequential(nn.Identity(), layer))


# ----------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("kind", KINDS)
def test_compile_warns_about_nothing(kind):
    layer, inputs = make(kind, initialise=False)  # lazy layers initialised while compiling
    x = inputs(2).requires_grad_()
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
        y.square().sum().backward()
    # PyTorch's own deprecation notices of torch.jit, which torch.compile imports on first use
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if not ("torch.jit" in str(w.message) and "deprecated" in str(w.message))]
    assert ours == []
    torch.testing.assert_close(y, layer(x.detach()))


@pytest.mark.parametrize("kind", KINDS)
def test_contiguous_weights_work_with_pruning_and_flat_parameter_tools(kind):
    # The default weight is a strided view (the fastest layout on the CPU), on which `.view(-1)`
    # fails; after `p.data = p.data.contiguous()` every layer computes the same, stays contiguous
    # through a training step, and the tools that flatten parameters work.
    from torch.nn.utils import parameters_to_vector, prune, vector_to_parameters

    layer, inputs = make(kind)
    contiguous, _ = make(kind)
    for p in contiguous.parameters():
        p.data = p.data.contiguous()
    x = inputs(3)
    torch.testing.assert_close(contiguous(x), layer(x))
    layer(x).square().sum().backward()
    contiguous(x).square().sum().backward()
    for got, want in zip(contiguous.parameters(), layer.parameters()):
        assert got.is_contiguous() and got.grad.is_contiguous()
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5)
    torch.optim.SGD(contiguous.parameters(), lr=0.1, momentum=0.9).step()
    assert all(p.is_contiguous() for p in contiguous.parameters())

    flat = parameters_to_vector(contiguous.parameters())
    assert flat.numel() == sum(p.numel() for p in contiguous.parameters())
    vector_to_parameters(2 * flat, contiguous.parameters())
    torch.testing.assert_close(parameters_to_vector(contiguous.parameters()), 2 * flat)

    owned = [(m, name) for m in contiguous.modules() for name, _ in m.named_parameters(recurse=False)]
    prune.global_unstructured(owned, prune.L1Unstructured, amount=0.5)
    pruned = sum(int((getattr(m, name) == 0).sum()) for m, name in owned)
    assert pruned >= flat.numel() // 2
    contiguous(x).square().sum().backward()  # through the pruning hooks
    for m, name in owned:
        prune.remove(m, name)
    assert sum(int((getattr(m, name) == 0).sum()) for m, name in owned) == pruned
