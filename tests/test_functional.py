"""The functional form against the float64 reference on random configurations."""
import pytest
import torch
from hypothesis import given, settings

import unshared.functional as UF
from unshared.backends import settings as backend_settings
from conftest import EXAMPLES_SCALE
from configs import Config, configs
from reference import locally_connected_reference

FN = {1: UF.locally_connected1d, 2: UF.locally_connected2d, 3: UF.locally_connected3d}
# (rtol, atol) for outputs and gradients of order one
TOLERANCE = {torch.float64: (1e-7, 1e-7), torch.float32: (1e-5, 1e-5),
             torch.float16: (1e-2, 1e-2), torch.bfloat16: (4e-2, 4e-2)}


def check_against_reference(cfg: Config, dtype, seed: int, backend: str = "auto", device="cpu"):
    """Forward and every gradient of ``backend`` against the float64 reference, at ``dtype``'s tolerance."""
    x, w, b = cfg.tensors(dtype=dtype, seed=seed, requires_grad=True, device=device)
    y = FN[cfg.nd](x, w, b, **cfg.kwargs(), backend=backend)
    assert y.dtype == dtype
    assert y.shape == ((cfg.out_channels, *cfg.output_size) if cfg.batch is None
                       else (cfg.batch, cfg.out_channels, *cfg.output_size))
    # the reference sees the same (rounded) values, in float64
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    br = None if b is None else b.detach().double().requires_grad_()
    yr = locally_connected_reference(xr, wr, br, **cfg.kwargs())
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(y.double(), yr, rtol=rtol, atol=atol)

    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    gy = gy.to(device)
    y.backward(gy.to(dtype))
    yr.backward(gy)
    for ours, ref, name in ((x, xr, "input"), (w, wr, "weight"), (b, br, "bias")):
        if ours is None:
            continue
        assert ours.grad.dtype == dtype and ours.grad.shape == ours.shape, name
        # gradients sum over up to batch * positions terms: scale the absolute tolerance
        torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=rtol, atol=atol * 4, msg=name)


def check_banks_against_reference(layer, x: torch.Tensor, padding: int) -> None:
    """A partial-sharing layer's output and its input and bank gradients against the reference
    with the banks expanded to positions (each bank's gradient sums its positions')."""
    y = layer(x)
    ref = locally_connected_reference(x, layer.expanded_weight(), layer.expanded_bias(), padding=padding)
    torch.testing.assert_close(y, ref)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, layer.weight), gy)
    want = torch.autograd.grad(ref, (x, layer.weight), gy)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend, dtype, max_batch, examples, seed", [
    ("torch", torch.float64, 3, 1000, 0), ("torch", torch.float32, 2, 300, 1),
    # the standard-operator backend (used for ONNX export) is held to the same definition
    ("composite", torch.float64, 3, 200, 5), ("composite", torch.bfloat16, 2, 40, 6)])
def test_backend_matches_reference(backend, dtype, max_batch, examples, seed):
    # the PyTorch backends (auto picks the compiled one on the CPU: tests/test_cpu_backend.py)
    @settings(max_examples=examples * EXAMPLES_SCALE)
    @given(cfg=configs(max_batch=max_batch))
    def check(cfg):
        check_against_reference(cfg, dtype, seed=seed, backend=backend)

    check()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@settings(max_examples=150 * EXAMPLES_SCALE)
@given(cfg=configs(max_batch=2))
def test_half_precision_matches_reference(dtype, cfg):
    # (that the sums are float32, on every backend: tests/test_half_precision.py)
    check_against_reference(cfg, dtype, seed=2)


def test_output_layout_follows_input():
    cfg = Config(2, 4, 6, (3, 3), (1, 1), 1, (1, 1), 2, "zeros", (7, 9), 2, "position", "channels_last")
    x, w, b = cfg.tensors(dtype=torch.float32)
    y = UF.locally_connected2d(x, w, b, **cfg.kwargs())
    assert y.is_contiguous(memory_format=torch.channels_last)
    y = UF.locally_connected2d(x.contiguous(), w, b, **cfg.kwargs())
    assert y.is_contiguous()


def test_plain_contiguous_public_weight_is_accepted():
    # a weight made by the user (contiguous in the public shape, not the library's storage order)
    cfg = Config(2, 3, 4, (2, 3), (2, 1), 0, (1, 1), 1, "zeros", (6, 5), 2, None, "contiguous")
    x, w, _ = cfg.tensors()
    w = w.contiguous()
    torch.testing.assert_close(UF.locally_connected2d(x, w, stride=(2, 1)),
                               locally_connected_reference(x, w, stride=(2, 1)))


def test_large_layer_is_split_into_blocks():
    # a tiny block budget forces one output row per block: results must not change
    cfg = Config(2, 3, 2, (3, 3), (1, 2), 1, (2, 1), 1, "zeros", (9, 8), 3, "position", "contiguous")
    x, w, b = cfg.tensors(requires_grad=True)
    expected = UF.locally_connected2d(x, w, b, **cfg.kwargs(), backend="torch")
    gx, gw = torch.autograd.grad(expected.sum(), (x, w))
    with backend_settings(block_elements=1):
        y = UF.locally_connected2d(x, w, b, **cfg.kwargs(), backend="torch")
        grads = torch.autograd.grad(y.sum(), (x, w))
    torch.testing.assert_close(y, expected)
    for ours, ref in zip(grads, (gx, gw)):
        torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("block_elements", [1, None])
@pytest.mark.parametrize("batch_inner_from", [0, 10**9])
@settings(max_examples=100 * EXAMPLES_SCALE)
@given(cfg=configs())
def test_input_gradient_orientations_and_blocks(batch_inner_from, block_elements, cfg):
    # the batch-innermost orientation normally starts at batch 32, and blocks split rows and batch
    # only on large layers: force each variant on small shapes
    with backend_settings(batch_inner_from=batch_inner_from, block_elements=block_elements):
        check_against_reference(cfg, torch.float64, seed=3, backend="torch")
        if block_elements:  # half precision accumulates the batch slices of the weight gradient in float32
            check_against_reference(cfg, torch.bfloat16, seed=4, backend="torch")
