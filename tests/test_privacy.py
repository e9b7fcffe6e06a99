"""Per-sample gradients and their norms (unshared.privacy) equal one backward pass per sample, in
float64, for every layer kind they compute; the others are refused."""
import pytest
import torch
import torch.nn.functional as F

import unshared
from layer_kinds import KINDS, make
from unshared.privacy import LAYERS, per_sample_gradients, per_sample_norms, unfold

EXTRA = {  # what KINDS does not cover: groups with padding modes, "same", banks with their bias kinds
    "2d-circular-groups": lambda: unshared.LocallyConnected2d(4, 6, 3, padding=(1, 2), padding_mode="circular",
                                                              groups=2, input_size=(5, 6)),
    "1d-same-replicate-dilated": lambda: unshared.LocallyConnected1d(2, 3, 4, padding="same", dilation=2,
                                                                     padding_mode="replicate", input_size=9),
    "3d-stride-no-bias": lambda: unshared.LocallyConnected3d(2, 2, 2, stride=(2, 1, 2), bias=False,
                                                             input_size=(5, 3, 4)),
    "tiled-per-bank-bias-groups": lambda: unshared.TiledLocallyConnected2d(4, 4, 3, padding=1, groups=2,
                                                                           input_size=(6, 5), tile_size=(2, 3)),
    "region-shared-bias": lambda: unshared.RegionLocallyConnected2d(3, 2, 2, shared_bias=True, input_size=7,
                                                                    regions=(3, 2)),
    "transposed-groups-dilated": lambda: unshared.LocallyConnectedTranspose2d(4, 2, 2, stride=2, dilation=2,
                                                                              groups=2, input_size=(3, 4)),
}


def _layers():
    for name in KINDS:
        layer, inputs = make(name)
        if isinstance(layer, LAYERS):
            yield name, layer, inputs(3)
    for name, factory in EXTRA.items():
        torch.manual_seed(0)
        layer = factory()
        yield name, layer, torch.randn(3, layer.in_channels, *layer.input_size)


CASES = list(_layers())


@pytest.mark.parametrize("name,layer,x", CASES, ids=[c[0] for c in CASES])
def test_per_sample_gradients_and_norms_equal_a_loop(name, layer, x):
    layer, x = layer.double(), x.double()
    grad_output = torch.randn_like(layer(x))
    grads = per_sample_gradients(layer, x, grad_output)
    norms = per_sample_norms(layer, x, grad_output)
    params = [p for p in layer.parameters()]
    assert list(grads) == list(norms) == params
    for i in range(x.shape[0]):
        want = torch.autograd.grad(layer(x[i:i + 1]), params, grad_output[i:i + 1])
        for p, w in zip(params, want):
            torch.testing.assert_close(grads[p][i], w, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(norms[p][i], w.norm(), rtol=1e-12, atol=1e-12)


def test_parameters_without_gradients_are_left_out():
    layer = unshared.LocallyConnected2d(2, 3, 3, input_size=5)
    layer.weight.requires_grad_(False)
    x = torch.randn(2, 2, 5, 5)
    assert list(per_sample_gradients(layer, x, torch.randn(2, 3, 3, 3))) == [layer.bias]


def test_unfold_equals_torch_unfold_in_2d():
    x = torch.randn(2, 3, 7, 8)
    windows = unfold(x, (3, 2), (2, 1), ((1, 1), (0, 0)), (1, 2))  # (N, *output_size, C, *kernel)
    want = F.unfold(x, (3, 2), dilation=(1, 2), padding=(1, 0), stride=(2, 1))  # (N, C * K, positions)
    torch.testing.assert_close(windows.flatten(3).flatten(1, 2).transpose(1, 2), want)


def test_other_layers_and_inputs_are_refused():
    low_rank = unshared.LowRankLocallyConnected2d(2, 3, 3, input_size=5, rank=2)
    with pytest.raises(TypeError, match="got LowRankLocallyConnected2d"):
        per_sample_gradients(low_rank, torch.randn(2, 2, 5, 5), torch.randn(2, 3, 3, 3))
    layer = unshared.LocallyConnected2d(2, 3, 3, input_size=5)
    with pytest.raises(ValueError, match=r"got input of shape \(2, 5, 5\)"):
        per_sample_norms(layer, torch.randn(2, 5, 5), torch.randn(3, 3, 3))
