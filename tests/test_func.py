"""``torch.func`` transforms on every layer and backend equal plain autograd: ``grad``,
per-sample gradients ``vmap(grad(...))``, ``jacrev``/``jacfwd``, ``jvp`` and ``vmap`` of the forward."""
import pytest
import torch
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap

import unshared
from conftest import CPU_AUTO

# cpu: the compiled kernels (when built); conv: the shared-bank and low-rank layers by convolutions
BACKENDS = ["torch", "composite", "conv"] + (["cpu"] if CPU_AUTO == "cpu" else [])
try:
    import triton  # noqa: F401
    BACKENDS.append("triton")  # in Triton's interpreter on a CPU-only machine
except ImportError:
    pass


def layers(backend):
    """(name, layer) for every layer kind that can run on ``backend``, in float64."""
    kw = dict(dtype=torch.float64, backend=backend)
    if backend != "conv":  # a filter bank per position: nothing for a convolution to share
        yield "1d", unshared.LocallyConnected1d(2, 3, 3, stride=2, padding=1, input_size=7, **kw)
        yield "2d groups", unshared.LocallyConnected2d(4, 2, (2, 3), groups=2, input_size=(4, 5), **kw)
        yield "3d", unshared.LocallyConnected3d(2, 2, 2, input_size=3, **kw)
        yield "transposed", unshared.LocallyConnectedTranspose2d(2, 3, 3, stride=2, input_size=(3, 4), **kw)
    yield "tiled", unshared.TiledLocallyConnected2d(2, 3, 3, padding=1, input_size=5, tile_size=2, **kw)
    yield "region", unshared.RegionLocallyConnected2d(2, 3, 3, input_size=6, regions=(2, 1), **kw)
    if backend != "triton":  # (slow in Triton's interpreter; tests/test_spectrum.py runs it there)
        yield "low-rank", unshared.LowRankLocallyConnected2d(2, 3, 3, input_size=5, rank=2, **kw)


CASES = [(backend, name, layer) for backend in BACKENDS for name, layer in layers(backend)]
IDS = [f"{backend}-{name}" for backend, name, _ in CASES]


def sample_input(layer, batch=3):
    return torch.randn(batch, layer.in_channels, *layer.input_size, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(0))


def loss(layer, params, x):
    return functional_call(layer, params, (x,)).square().sum()


@pytest.mark.parametrize("backend,name,layer", CASES, ids=IDS)
def test_grad_and_per_sample_gradients_equal_autograd(backend, name, layer):
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = sample_input(layer)
    got = grad(lambda p: loss(layer, p, x))(params)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    want = torch.autograd.grad(loss(layer, leaves, x), list(leaves.values()))
    for (k, g), w in zip(got.items(), want):
        torch.testing.assert_close(g, w, msg=k)
    # per-sample gradients (differential privacy): one gradient per sample, unbatched calls inside
    per_sample = vmap(grad(lambda p, xi: loss(layer, p, xi)), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        ref = torch.autograd.grad(loss(layer, leaves, x[i]), list(leaves.values()))
        for (k, g), w in zip(per_sample.items(), ref):
            torch.testing.assert_close(g[i], w, msg=f"{k}, sample {i}")


@pytest.mark.parametrize("backend,name,layer", CASES, ids=IDS)
def test_jacobians_jvp_and_vmap_of_the_forward(backend, name, layer):
    x = sample_input(layer, batch=2)
    with torch.no_grad():
        y = layer(x)
    f = lambda t: layer(t)  # noqa: E731
    torch.testing.assert_close(vmap(f)(x.unsqueeze(1)).squeeze(1), y)
    torch.testing.assert_close(vmap(f)(x), y)  # unbatched samples
    tangent = torch.randn_like(x)
    out, tan = jvp(f, (x,), (tangent,))
    torch.testing.assert_close(out, y)
    bias = 0 if layer.bias is None else layer(torch.zeros_like(x)).detach()
    torch.testing.assert_close(tan, f(tangent).detach() - bias)  # linear in x (up to the bias)
    small = x[:1]
    torch.testing.assert_close(jacrev(f)(small), jacfwd(f)(small))
    xr = small.clone().requires_grad_()
    rows = [torch.autograd.grad(layer(xr).flatten()[i], xr)[0] for i in range(3)]
    jac = jacrev(f)(small).flatten(0, -small.dim() - 1)
    for i in range(3):
        torch.testing.assert_close(jac[i], rows[i])


def test_indices_made_inside_a_transform_are_not_kept_for_later_calls():
    # the composite backend builds its bank index inside grad(): a cached wrapped tensor broke a
    # later plain call on Triton (its interpreter cannot read a TensorWrapper's storage)
    from unshared import _cache
    layer = unshared.RegionLocallyConnected2d(2, 3, 3, input_size=6, regions=(2, 1), dtype=torch.float64,
                                              backend="composite")
    x = sample_input(layer)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    _cache.clear()
    grad(lambda p: loss(layer, p, x))(params)
    indices = [v for key, v in _cache.CACHE.items() if key[0] == "index"]
    cached = [t for v in indices for t in (v if isinstance(v, tuple) else (v,))]
    assert not any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in cached)
    layer(x)  # a plain call keeps its index
    assert any(key[0] == "index" for key in _cache.CACHE)
    if "triton" in BACKENDS:
        layer.backend = "triton"
        expected = unshared.RegionLocallyConnected2d(2, 3, 3, input_size=6, regions=(2, 1), dtype=torch.float64,
                                                     backend="torch")
        expected.load_state_dict(layer.state_dict())
        torch.testing.assert_close(layer(x), expected(x))
