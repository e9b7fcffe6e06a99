"""Under ``torch.autocast`` the layers behave like ``nn.Conv``: they cast input, weight and bias to
the autocast dtype, return that dtype, and the float32 parameters get float32 gradients."""
import pytest
import torch

import unshared
from unshared import functional as UF

LAYERS = {
    "locally connected": lambda: unshared.LocallyConnected2d(4, 6, 3, padding=1, input_size=8),
    "shared bias, groups": lambda: unshared.LocallyConnected2d(4, 6, 3, groups=2, input_size=8, shared_bias=True),
    "tiled, by banks": lambda: unshared.TiledLocallyConnected2d(4, 6, 3, input_size=8, tile_size=2),
    "tiled, by convolutions": lambda: unshared.TiledLocallyConnected2d(4, 6, 3, input_size=20, tile_size=1),
    "1d": lambda: unshared.LocallyConnected1d(4, 6, 3, input_size=9),
}


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
def test_cpu_bfloat16_autocast_like_conv(make):
    torch.manual_seed(0)
    layer = make()
    nd = layer._nd
    x = torch.randn(2, 4, *layer.input_size, requires_grad=True)
    expected = layer(x)
    expected.square().sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    x.grad = None
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d}[nd](4, 6, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        assert conv(torch.randn(2, 4, *layer.input_size)).dtype == y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)
    y.float().square().sum().backward()
    assert x.grad.dtype == torch.float32
    for p, g in zip(layer.parameters(), grads):
        assert p.grad.dtype == torch.float32
        # bfloat16 products (8 bits of mantissa): compare as a whole, relative to the gradient's norm
        assert (p.grad - g).norm() <= 2e-2 * g.norm(), (p.grad - g).norm() / g.norm()


def test_functional_autocast_leaves_float64_alone():
    x, w = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(4, 4, 5, 3, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert UF.locally_connected2d(x, w).dtype == torch.float64
        assert UF.locally_connected2d(x.float(), w.float()).dtype == torch.bfloat16
