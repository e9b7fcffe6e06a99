"""torch.compile(fullgraph=True) and the torch.library ops behind it."""
import warnings

import pytest
import torch
from torch import nn

import unshared
import unshared.functional as UF
from configs import Config
from conftest import CPU_AUTO
from unshared.backends import ops

_HAS_TRITON = ops.BACKENDS["triton"].TRITON_INSTALLED


def _network():
    torch.manual_seed(0)
    return nn.Sequential(
        unshared.LocallyConnected2d(3, 4, 3, padding=1, input_size=(6, 7)), nn.ReLU(),
        unshared.TiledLocallyConnected2d(4, 4, 2, input_size=(6, 7), tile_size=2), nn.ReLU(),
        unshared.LocallyConnected2d(4, 2, 2, stride=2, padding=1, padding_mode="reflect", input_size=(5, 6),
                                    shared_bias=True),
        nn.Flatten(), nn.Linear(2 * 3 * 4, 3))


def _forward_backward(model, x):
    x = x.detach().requires_grad_()
    y = model(x)
    y.square().sum().backward()
    grads = [x.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return y.detach(), grads


@pytest.mark.parametrize("compiler", ["inductor", "aot_eager"])
def test_network_compiles_fullgraph_and_matches_eager(compiler):
    net = _network()
    x = torch.randn(5, 3, 6, 7)
    y, grads = _forward_backward(net, x)
    torch._dynamo.reset()
    yc, grads_c = _forward_backward(torch.compile(net, fullgraph=True, backend=compiler), x)
    torch.testing.assert_close(yc, y)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cfg", [
    Config(1, 3, 4, (3,), (2,), 1, (1,), 1, "circular", (9,), 2, "position", "noncontiguous"),
    Config(2, 4, 2, (2, 3), (1, 1), "same", (2, 1), 2, "replicate", (5, 6), None, "shared", "contiguous"),
    Config(3, 2, 2, (2, 2, 2), (1, 2, 1), 0, (1, 1, 1), 1, "zeros", (3, 5, 4), 3, None, "channels_last"),
], ids=["1d", "2d-unbatched", "3d-channels-last"])
def test_functional_compiles_fullgraph(cfg):
    x, w, b = cfg.tensors(requires_grad=True)
    fn = {1: UF.locally_connected1d, 2: UF.locally_connected2d, 3: UF.locally_connected3d}[cfg.nd]

    def call(x, w, b):
        return fn(x, w, b, **cfg.kwargs())

    torch._dynamo.reset()
    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    for f in (call, compiled):
        y = f(x, w, b)
        grads = torch.autograd.grad(y.square().sum(), [t for t in (x, w, b) if t is not None])
        if f is call:
            expected = (y, grads)
    torch.testing.assert_close(y, expected[0])
    for a, e in zip(grads, expected[1]):
        torch.testing.assert_close(a, e)


@pytest.mark.skipif(not _HAS_TRITON, reason="Triton is not installed")
def test_triton_backend_compiles_fullgraph():
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: under TRITON_INTERPRET=1 (conftest)
    layer = unshared.LocallyConnected2d(2, 3, 2, padding=1, input_size=(3, 4), backend="triton",
                                        device=device, dtype=torch.float64)
    compiled_matches_eager(layer, torch.randn(2, 2, 3, 4, device=device, dtype=torch.float64))


def compiled_matches_eager(layer, x):
    """Compiled (fullgraph) forward and gradients equal eager ones, and compiling warns about nothing."""
    y, grads = _forward_backward(layer, x)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yc, grads_c = _forward_backward(torch.compile(layer, fullgraph=True, backend="aot_eager"), x)
    # (PyTorch's own deprecation notices of torch.jit, which torch.compile imports on first use)
    assert [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if not ("torch.jit" in str(w.message) and "deprecated" in str(w.message))] == []
    torch.testing.assert_close(yc, y)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["torch", "composite", "conv", "unfold"])
def test_every_backend_compiles_fullgraph(backend):
    # (auto, and so the compiled kernels, in the tests above; cpu's own in tests/test_cpu_backend.py)
    kw = dict(backend=backend, dtype=torch.float64)
    layers = [unshared.TiledLocallyConnected2d(2, 3, 2, padding=1, input_size=(5, 4), tile_size=2, **kw),
              unshared.LowRankLocallyConnected1d(2, 3, 3, input_size=7, rank=2, **kw)]
    if backend != "conv":
        layers += [unshared.LocallyConnected2d(2, 3, 2, stride=2, input_size=(5, 4), **kw),
                   unshared.LocallyConnectedTranspose1d(2, 3, 3, stride=2, input_size=4, **kw)]
    for layer in layers:
        compiled_matches_eager(layer, torch.randn(2, 2, *layer.input_size, dtype=torch.float64))


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=pytest.mark.skipif(
    CPU_AUTO != "cpu", reason="the compiled CPU kernels are not built"))])
@pytest.mark.parametrize("kernel_major", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("banks", [False, True])
def test_opcheck(channels_last, banks, kernel_major, backend):
    # schema, fake (meta) implementations, autograd registration and layouts of the three ops
    g = unshared._utils.Geometry((4, 5), (3, 2), (2, 2), (1, 2), ((0, 0), (0, 0)), (1, 1), 2, 4, 6,
                                 (1, 2) if banks else None, ((0, 0, 0), (0, 1)) if banks else None)
    geometry = g.encode()
    x = torch.randn(3, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = unshared._utils.empty_weight((*g.weight_leading, 6, 2, 2, 2), 2, kernel_major=kernel_major,
                                     dtype=torch.float64)
    w = w.normal_().requires_grad_()
    gy = torch.randn(3, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.unshared.forward, (x, w, geometry, backend))
    torch.library.opcheck(torch.ops.unshared.input_grad, (gy, w, geometry, backend, channels_last))
    torch.library.opcheck(torch.ops.unshared.weight_grad, (x, gy, geometry, backend, kernel_major))


def test_meta_tensors_get_shapes_without_computing():
    layer = unshared.LocallyConnected2d(16, 16, 9, input_size=63, device="meta")
    y = layer(torch.empty(64, 16, 63, 63, device="meta"))
    assert y.shape == (64, 16, 55, 55) and y.device.type == "meta"
