"""The seeds' two CIFAR-10 nets: TensorFlow's (its "local" layers are dense) and cuda-convnet's
(truly locally connected), checked against their frameworks' formulas written as loops."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import unshared
from reference import locally_connected_reference
from unshared.costs import parameter_table
from unshared.models import CudaConvnetCifar10, TFCifar10, _MaxPool2dSame

SPECTRUM_PAGE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "spectrum.md"  # where the table lives


def _count(module):
    return sum(p.numel() for p in module.parameters())


def _windows_max(x, starts, size):
    """Max over windows ``[start, start + size)`` per spatial dimension, clipped to the input."""
    (H, W), (rows, cols) = x.shape[-2:], starts
    out = torch.empty(*x.shape[:-2], len(rows), len(cols), dtype=x.dtype)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            out[..., i, j] = x[..., max(r, 0):min(r + size, H), max(c, 0):min(c + size, W)].amax((-2, -1))
    return out


def _tf_same_starts(n, size, stride):
    out = math.ceil(n / stride)
    before = max((out - 1) * stride + size - n, 0) // 2
    return [i * stride - before for i in range(out)]


def _response_norm(x, radius, bias, alpha, beta):
    """``x / (bias + alpha * sum of x^2 over channels c - radius .. c + radius)^beta`` (TensorFlow's
    ``lrn``; cuda-convnet's ``cmrnorm`` with ``alpha = scale / size``)."""
    sq = x.square()
    sums = torch.stack([sq[:, max(c - radius, 0):c + radius + 1].sum(1) for c in range(x.shape[1])], 1)
    return x / (bias + alpha * sums) ** beta


# ----------------------------------------------------------------------------- TensorFlow

def test_tf_cifar10_parameters_shapes_and_dense_locals():
    model = TFCifar10()
    assert _count(model) == 1_068_298
    assert isinstance(model.local3, nn.Linear) and model.local3.in_features == 64 * 6 * 6
    assert isinstance(model.local4, nn.Linear) and (model.local4.in_features, model.local4.out_features) == (384, 192)
    x = torch.randn(2, 3, 24, 24)
    y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model(x[0]).shape == (10,)
    # the tutorial's initialisation: truncated normals, constant biases
    assert model.conv1.weight.abs().max() <= 0.1 and model.local3.weight.abs().max() <= 0.08
    assert (model.conv2.bias == 0.1).all() and (model.conv1.bias == 0).all()


@pytest.mark.parametrize("size", [(24, 24), (12, 12), (7, 10), (1, 2)])
def test_tf_same_max_pool(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    for k, s in [(3, 2), (3, 1), (2, 3)]:
        y = _MaxPool2dSame(k, s)(x)
        assert y.shape[-2:] == tuple(math.ceil(n / s) for n in size)
        starts = [_tf_same_starts(n, k, s) for n in size]
        torch.testing.assert_close(y, _windows_max(x, starts, k))
    # 24 -> 12 pads nothing before and one element after
    assert _tf_same_starts(24, 3, 2)[:2] == [0, 2] and _tf_same_starts(24, 3, 2)[-1] == 22


def test_tf_lrn_parameters_converted():
    x = torch.randn(2, 64, 5, 4, dtype=torch.float64) * 10   # large enough for the norm to matter
    expected = _response_norm(x, radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
    torch.testing.assert_close(TFCifar10().norm1(x), expected)
    assert not torch.allclose(expected, x, rtol=1e-2)


# ----------------------------------------------------------------------------- cuda-convnet

def test_cuda_convnet_cifar10_local_layers_are_locally_connected():
    model = CudaConvnetCifar10()
    for layer, filters in ((model.local3, 64), (model.local4, 32)):
        assert isinstance(layer, unshared.LocallyConnected2d)
        assert layer.input_size == layer.output_size == (6, 6)
        assert layer.weight.shape == (6, 6, filters, 64, 3, 3) and layer.bias.shape == (filters, 6, 6)
        assert not torch.equal(layer.weight[0, 0], layer.weight[3, 2])  # a filter bank per position
        x = torch.randn(2, 64, 6, 6)
        torch.testing.assert_close(layer(x), locally_connected_reference(x, layer.weight, layer.bias, padding=1).float())
    x = torch.randn(2, 3, 24, 24)
    y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.logsumexp(1).sum().backward()
    assert model.local3.weight.grad.abs().sum() > 0


def test_cuda_convnet_cifar10_parameter_count_by_hand():
    conv1 = 5 * 5 * 3 * 64 + 64          # sharedBiases=1: one bias per filter
    conv2 = 5 * 5 * 64 * 64 + 64
    positions = 6 * 6                    # 24 -> pool 12 -> pool 6; padding 1 keeps 6x6
    local3 = positions * 64 * 64 * 3 * 3 + positions * 64   # a filter bank and biases per position
    local4 = positions * 32 * 64 * 3 * 3 + positions * 32
    fc10 = 32 * positions * 10 + 10
    model = CudaConvnetCifar10(device="meta")
    assert _count(model.local3) == local3 and _count(model.local4) == local4
    assert _count(model) == conv1 + conv2 + local3 + local4 + fc10 == 2_112_970


@pytest.mark.parametrize("n", [24, 12, 13])
def test_cuda_convnet_pooling_and_response_norm(n):
    x = torch.randn(2, 64, n, n, dtype=torch.float64)
    model = CudaConvnetCifar10()
    y = model.pool1(x)
    outputs = math.ceil((n - 3) / 2) + 1     # cuda-convnet's outputsX for start=0, sizeX=3, stride=2
    assert y.shape[-1] == outputs
    starts = [[2 * i for i in range(outputs)]] * 2
    torch.testing.assert_close(y, _windows_max(x, starts, 3))
    scale, size = 0.001, 9                   # layer-params-conv-local-11pct.cfg; scale divided by size
    torch.testing.assert_close(model.rnorm1(x * 10), _response_norm(x * 10, size // 2, 1.0, scale / size, 0.75))


# ----------------------------------------------------------------------------- together

def test_docs_table_is_what_parameter_table_prints():
    table = parameter_table(TFCifar10(device="meta"), CudaConvnetCifar10(device="meta"))
    assert table in SPECTRUM_PAGE.read_text()
    assert "| local3 | Linear | 885,120 | LocallyConnected2d | 1,329,408 |" in table
    assert "| total |  | 1,068,298 |  | 2,112,970 |" in table


def test_untie_tf_cifar10_conv1():
    model = TFCifar10(dtype=torch.float64).eval()
    x = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    untied = unshared.untie(model, x, include=["conv1"])
    assert untied.conv1.weight.shape == (24, 24, 64, 3, 5, 5) and isinstance(untied.conv2, nn.Conv2d)
    torch.testing.assert_close(untied(x), model(x))
