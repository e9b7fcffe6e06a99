"""Every autograd mode on every backend and layer kind (issue 36): forward-mode AD with dual inputs,
weights and biases, batched gradients (``gradcheck(check_batched_grad=True)``,
``is_grads_batched``) and ``jacobian(vectorize=True)``, against the float64 reference and finite
differences. Reverse mode, double backward and ``torch.func`` are in test_gradcheck.py,
test_eager_path.py and test_func.py."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.autograd import gradcheck
from torch.func import functional_call

import unshared.functional as UF
from configs import Config
from conftest import CPU_AUTO
from layer_kinds import KINDS, make
from reference import locally_connected_reference

BACKENDS = ["auto", "torch", "composite"] + (["cpu"] if CPU_AUTO == "cpu" else [])
try:
    import triton  # noqa: F401
    TRITON = ["triton"]  # in Triton's interpreter on a CPU-only machine
except ImportError:
    TRITON = []
FN = {1: UF.locally_connected1d, 2: UF.locally_connected2d, 3: UF.locally_connected3d}

CONFIGS = {
    "1d-stride-padding": Config(1, 2, 3, (3,), (2,), 1, (1,), 1, "zeros", (8,), 2, "position", "contiguous"),
    "1d-reflect-unbatched": Config(1, 2, 2, (2,), (1,), 1, (1,), 1, "reflect", (5,), None, "shared", "contiguous"),
    "2d-groups-kernel-major": Config(2, 4, 2, (2, 3), (1, 1), 0, (1, 1), 2, "zeros", (4, 5), 3, "position",
                                     "noncontiguous", kernel_major=True),
    "2d-channels-last-dilation": Config(2, 2, 3, (2, 2), (1, 1), "same", (1, 2), 1, "zeros", (5, 5), 2, None,
                                        "channels_last"),
    "3d": Config(3, 2, 2, (2, 2, 2), (1, 1, 1), 0, (1, 1, 1), 1, "zeros", (3, 3, 4), 1, "position", "contiguous"),
}


def _reference(cfg: Config, x, w, b):
    return locally_connected_reference(x, w, b, cfg.stride, cfg.padding, cfg.dilation, cfg.groups, cfg.padding_mode)


@pytest.mark.parametrize("backend", BACKENDS + TRITON)
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("duals", ["x", "w", "b", "xwb"])
def test_forward_mode_tangents_equal_the_reference(backend, name, duals):
    # the layer is linear in x, w and b apart: its tangent is f(tx, w) + f(x, tw) + tb
    cfg = CONFIGS[name]
    if "b" in duals and cfg.bias is None:
        pytest.skip("no bias")
    x, w, b = cfg.tensors(torch.float64, seed=3)
    tx, tw, tb = (None if t is None else torch.randn_like(t) for t in (x, w, b))
    with fwAD.dual_level():
        dual = {"x": fwAD.make_dual(x, tx) if "x" in duals else x,
                "w": fwAD.make_dual(w, tw) if "w" in duals else w,
                "b": fwAD.make_dual(b, tb) if "b" in duals and b is not None else b}
        y = FN[cfg.nd](dual["x"], dual["w"], dual["b"], **cfg.kwargs(), backend=backend)
        primal, tangent = fwAD.unpack_dual(y)
    want = 0
    if "x" in duals:
        want = want + _reference(cfg, tx, w, None)
    if "w" in duals:
        want = want + _reference(cfg, x, tw, None)
    if "b" in duals:
        want = want + _reference(cfg, torch.zeros_like(x), torch.zeros_like(w), tb)
    assert tangent is not None, "forward-mode AD lost the tangent"
    torch.testing.assert_close(primal, _reference(cfg, x, w, b))
    torch.testing.assert_close(tangent, want)


def _kind_backends():
    for kind in KINDS:
        for backend in BACKENDS + (TRITON if kind in ("1d", "transposed-1d") else []):
            yield pytest.param(kind, backend, id=f"{kind}-{backend}")


def _layer_on(kind: str, backend: str):
    layer, inputs = make(kind)
    layer = layer.double()
    layer.backend = backend
    x = inputs(2).double()
    try:
        layer(x)
    except ValueError as error:  # a backend that cannot compute this kind (tiled by convolutions, ...)
        if "cannot" not in str(error):
            raise
        pytest.skip(str(error))
    return layer, x


@pytest.mark.parametrize("kind,backend", list(_kind_backends()))
def test_gradcheck_in_every_mode(kind, backend):
    # reverse, forward mode and batched gradients, against finite differences
    layer, x = _layer_on(kind, backend)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().requires_grad_() for p in layer.parameters()]

    def f(x, *values):
        return functional_call(layer, dict(zip(names, values)), (x,))

    assert gradcheck(f, (x.requires_grad_(), *params), check_forward_ad=True, check_batched_grad=True,
                     check_backward_ad=True, fast_mode=True)


@pytest.mark.parametrize("kind,backend", list(_kind_backends()))
def test_batched_gradients_and_vectorized_jacobians(kind, backend):
    layer, x = _layer_on(kind, backend)
    x = x[:1].requires_grad_()
    y = layer(x)
    rows = torch.randn(4, *y.shape, dtype=y.dtype)
    params = (x, *layer.parameters())
    batched = torch.autograd.grad(y, params, rows, is_grads_batched=True, retain_graph=True)
    for i in range(rows.shape[0]):
        one = torch.autograd.grad(y, params, rows[i], retain_graph=True)
        for got, want in zip(batched, one):
            torch.testing.assert_close(got[i], want)
    vectorized = torch.autograd.functional.jacobian(layer, x.detach(), vectorize=True)
    layer.backend = "composite" if backend != "composite" else "torch"  # another route to the same jacobian
    try:
        other = torch.autograd.functional.jacobian(layer, x.detach(), vectorize=True)
    except ValueError:  # a kind that only some backends compute
        other = torch.autograd.functional.jacobian(layer, x.detach(), vectorize=False)
    torch.testing.assert_close(vectorized, other)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_vectorized_jacobian_equals_the_reference(backend):
    cfg = CONFIGS["2d-groups-kernel-major"]
    x, w, b = cfg.tensors(torch.float64, seed=5)
    x = x[:1]
    got = torch.autograd.functional.jacobian(
        lambda x, w, b: FN[2](x, w, b, **cfg.kwargs(), backend=backend), (x, w, b), vectorize=True)
    want = torch.autograd.functional.jacobian(lambda x, w, b: _reference(cfg, x, w, b), (x, w, b))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)
