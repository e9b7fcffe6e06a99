"""The reference itself: with every position holding the same filters it must equal nn.ConvNd."""
import pytest
import torch
from hypothesis import given, settings

from conftest import EXAMPLES_SCALE
from configs import configs
from reference import locally_connected_reference

CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}


@settings(max_examples=60 * EXAMPLES_SCALE)
@given(cfg=configs(layouts=("contiguous",)))
def test_reference_equals_conv_when_weights_are_shared(cfg):
    conv = CONV[cfg.nd](cfg.in_channels, cfg.out_channels, cfg.kernel_size, cfg.stride, cfg.padding,
                        cfg.dilation, cfg.groups, bias=cfg.bias is not None,
                        padding_mode=cfg.padding_mode, dtype=torch.float64)
    x, _, _ = cfg.tensors()
    weight = conv.weight.detach().expand(*cfg.output_size, *conv.weight.shape)
    bias = None if conv.bias is None else conv.bias.detach()
    expected = conv(x).detach()
    torch.testing.assert_close(locally_connected_reference(x, weight, bias, **cfg.kwargs()), expected)


def test_reference_uses_each_positions_own_filters():
    x = torch.ones(1, 1, 3)
    w = torch.arange(3.0).view(3, 1, 1, 1)  # position p multiplies by p
    assert locally_connected_reference(x, w).flatten().tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("mode,expected", [
    ("zeros", [0, 0, 1, 2, 3, 0]), ("reflect", [3, 2, 1, 2, 3, 2]),
    ("replicate", [1, 1, 1, 2, 3, 3]), ("circular", [2, 3, 1, 2, 3, 1]),
])
def test_reference_padding_modes(mode, expected):
    from reference import pad_reference
    x = torch.tensor([[[1.0, 2.0, 3.0]]])
    assert pad_reference(x, [(2, 1)], mode).flatten().tolist() == expected
