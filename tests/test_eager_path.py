"""The eager fast path (issue 16): plain eager calls skip the custom-operator dispatcher
(``unshared.backends.derivatives``), and give what the registered operators give, bit for bit:
outputs, gradients, second derivatives and errors. Wherever something observes the operators (a
dispatch mode such as ``FlopCounterMode``, ``torch.func``, ``torch.compile``), the operators run."""
import os
import sys

import pytest
import torch
from torch.autograd import gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import unshared
import unshared.functional as UF
from unshared._utils import Geometry
from unshared.backends import cpu, flops, ops

BACKENDS = ["torch", "auto",
            pytest.param("cpu", marks=pytest.mark.skipif(not cpu.available_isas(), reason="kernels not built"))]
FAST_NODES = ("ForwardBackward", "InputGradBackward")  # the eager autograd.Functions' nodes


def layers(backend):
    torch.manual_seed(0)
    return [
        (unshared.LocallyConnected1d(3, 4, 3, input_size=9, stride=2, backend=backend), (2, 3, 9)),
        (unshared.LocallyConnected2d(4, 4, 3, input_size=6, padding=1, backend=backend), (2, 4, 6, 6)),
        (unshared.LocallyConnected2d(4, 6, (3, 2), input_size=(7, 6), groups=2, bias=False, backend=backend),
         (3, 4, 7, 6)),
        (unshared.LocallyConnected3d(2, 3, 2, input_size=(3, 4, 3), backend=backend), (1, 2, 3, 4, 3)),
        (unshared.LocallyConnectedTranspose2d(4, 3, 3, input_size=5, stride=2, backend=backend), (2, 4, 5, 5)),
    ]


class Operators(TorchDispatchMode):
    """Records the unshared operators that run (a dispatch mode: the fast path must not be taken)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "unshared":
            self.seen.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def step(layer, shape, create_graph=False):
    """Output, the gradients of the input and the parameters, and (``create_graph``) the gradient
    of their squared norm with respect to the input."""
    torch.manual_seed(1)
    layer = layer.double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    gy = torch.randn_like(y)
    params = [x, *layer.parameters()]
    grads = torch.autograd.grad(y, params, gy, create_graph=create_graph)
    second = ()
    if create_graph:
        second = torch.autograd.grad(sum((g * g).sum() for g in grads), [x, layer.weight])
    return y, grads, second


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(5))
@pytest.mark.parametrize("create_graph", [False, True])
def test_fast_path_and_operators_agree_bit_for_bit(backend, case, create_graph):
    layer, shape = layers(backend)[case]
    y_fast, grads_fast, second_fast = step(layer, shape, create_graph)
    transposed_with_bias = case == 4 and layer.bias is not None  # an add on top; a layer's bias is folded in
    assert type(y_fast.grad_fn).__name__ in FAST_NODES or transposed_with_bias
    with Operators() as mode:
        y_op, grads_op, second_op = step(layer, shape, create_graph)
    assert {"forward", "input_grad", "weight_grad"} & set(mode.seen) and len(mode.seen) >= 3
    for fast, op in zip((y_fast, *grads_fast, *second_fast), (y_op, *grads_op, *second_op)):
        assert torch.equal(fast, op)


def test_fast_path_is_taken_and_its_second_derivatives_check():
    layer = unshared.LocallyConnected2d(2, 3, 2, input_size=4, bias=False).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert type(layer(x).grad_fn).__name__ == "ForwardBackward"
    with Operators():
        assert type(layer(x).grad_fn).__name__ != "ForwardBackward"
    assert gradgradcheck(lambda a, w: UF.locally_connected2d(a, w), (x, layer.weight), fast_mode=True)


def test_flop_counter_counts_every_operation():
    layer = unshared.LocallyConnected2d(4, 4, 3, input_size=6, bias=False)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    g = Geometry((6, 6), (4, 4), (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, 4, 4)
    with FlopCounterMode(display=False) as counter:
        layer(x).sum().backward()
    assert counter.get_total_flops() == 3 * flops.flops(2, g)
    y = layer(x)  # the forward on the fast path, its backward under the mode: counted too
    with FlopCounterMode(display=False) as counter:
        y.sum().backward()
    assert counter.get_total_flops() == 2 * flops.flops(2, g)


def test_torch_func_and_compile_see_the_operators():
    layer = unshared.LocallyConnected2d(2, 3, 2, input_size=4, bias=False)
    x = torch.randn(2, 2, 4, 4)
    expected = torch.autograd.grad(layer(x).sum(), layer.weight)[0]
    got = torch.func.grad(lambda w: torch.func.functional_call(layer, {"weight": w}, (x,)).sum())(layer.weight)
    assert torch.allclose(got, expected, atol=1e-6)
    targets = []

    def record(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes)
        return gm

    torch._dynamo.reset()
    compiled = torch.compile(layer, backend=record, fullgraph=True)
    assert torch.allclose(compiled(x), layer(x), atol=1e-6)
    assert "unshared.forward" in [t.removesuffix(".default") for t in targets]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_operands_raise_the_operators_errors_on_the_fast_path(backend):
    g = Geometry((4, 4), (2, 2), (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, 2, 3)
    x, w = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 3, 2, 3, 3)
    for bad_x, bad_w in ((x[:, :1], w), (x, w[:1]), (x, w.double()), (x.long(), w.long())):
        for requires_grad in (False, True):
            bad_w = bad_w.detach().requires_grad_(requires_grad and bad_w.is_floating_point())
            with pytest.raises(ValueError, match="^unshared.forward: ") as by_operator:
                torch.ops.unshared.forward(bad_x, bad_w, g.encode(), backend)
            with pytest.raises(ValueError, match="^unshared.forward: ") as fast:
                ops.locally_connected(bad_x, bad_w, g, backend)
            assert str(fast.value) == str(by_operator.value)


def test_a_configuration_seen_before_still_refuses_bad_input():
    layer = unshared.LocallyConnected2d(4, 4, 3, input_size=6)
    x = torch.randn(2, 4, 6, 6)
    layer(x)
    for _ in range(2):  # a failed call keeps no plan: the same error again
        with pytest.raises(TypeError, match="bias dtype torch.float32 differs from input dtype torch.float64"):
            UF.locally_connected2d(x.double(), layer.weight.double(), layer.bias)
        with pytest.raises(TypeError, match="stride must be an int or a tuple of 2 ints, got 1.0"):
            UF.locally_connected2d(x, layer.weight, layer.bias, stride=1.0)
        with pytest.raises(ValueError, match="built for input_size=\\(6, 6\\), got input of spatial size \\(7, 6\\)"):
            layer(torch.randn(2, 4, 7, 6))
        with pytest.raises(TypeError, match="input must be a floating point tensor"):
            UF.locally_connected2d(x.long(), layer.weight.long())
    assert torch.equal(layer(x), UF.locally_connected2d(x, layer.weight, layer.bias))


@pytest.mark.parametrize("shared_bias", [False, True])
def test_the_bias_is_added_inside_the_fast_node(shared_bias):
    layer = unshared.LocallyConnected2d(3, 4, 3, input_size=5, shared_bias=shared_bias).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert type(y.grad_fn).__name__ == "ForwardBackward"  # one node: no separate add
    gy = torch.randn_like(y)
    fast = torch.autograd.grad(y, (x, layer.weight, layer.bias), gy)
    with Operators():
        y_op = layer(x)
        ops_grads = torch.autograd.grad(y_op, (x, layer.weight, layer.bias), gy)
    assert torch.equal(y, y_op) and all(torch.equal(a, b) for a, b in zip(fast, ops_grads))
    with torch.no_grad():  # the bare call adds it in place, to the same values
        assert torch.equal(layer(x), y)


def test_a_bias_the_fast_node_cannot_hold_is_added_after_it():
    # the functional forms refuse mixed dtypes; the operator entry adds such a bias as `+` would
    g = Geometry((6,), (4,), (3,), (1,), ((0, 0),), (1,), 1, 3, 5)
    x, w = torch.randn(2, 3, 6, requires_grad=True), torch.randn(4, 5, 3, 3)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = ops.locally_connected(x, w, g, "auto", bias=bias)
    assert y.dtype == torch.float64 and type(y.grad_fn).__name__ == "AddBackward0"
    torch.testing.assert_close(y, ops.locally_connected(x, w, g, "auto") + bias.view(-1, 1))
    y.sum().backward()
    assert bias.grad.dtype == torch.float64 and torch.equal(bias.grad, torch.full((5,), 8.0, dtype=torch.float64))


def test_a_dual_bias_in_forward_mode_ad_is_added_after_the_node():
    import torch.autograd.forward_ad as fwAD
    x, w = torch.randn(2, 3, 6, dtype=torch.float64), torch.randn(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    b, tangent = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    with fwAD.dual_level():
        y = UF.locally_connected1d(x, w, fwAD.make_dual(b, tangent))
        assert torch.equal(fwAD.unpack_dual(y).tangent, tangent.view(-1, 1).expand(2, 5, 4))


def unshared_calls(function):
    """The names of the Python functions of unshared that ``function()`` calls (a profile hook)."""
    package, names = os.path.dirname(unshared.__file__), []

    def hook(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(package):
            names.append(frame.f_code.co_qualname)

    sys.setprofile(hook)
    try:
        function()
    finally:
        sys.setprofile(None)
    return names


@pytest.mark.skipif(not cpu.available_isas(), reason="kernels not built")
def test_a_cached_call_passes_through_few_functions():
    # issue 36: one plan from the call to the C kernel (it was 40 functions forward, 54 backward)
    layer = unshared.LocallyConnected2d(4, 4, 3, input_size=6, padding=1, backend="cpu")
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    layer(x).sum().backward()  # plans and caches filled
    y = layer(x)
    forward = unshared_calls(lambda: layer(x))
    backward = unshared_calls(lambda: y.backward(torch.ones_like(y)))
    assert len(forward) <= 15, forward
    assert len(backward) <= 20, backward
