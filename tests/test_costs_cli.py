"""Parameter arithmetic (checked against real modules on the meta device), equivariance.
The ``unshared params`` command is tested in test_cli.py."""
import pytest
import torch

import unshared
from unshared.costs import layer_costs


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("case", [
    dict(input_size=(63, 63), in_channels=16, out_channels=16, kernel_size=9),
    dict(input_size=(55, 55), in_channels=16, out_channels=16, kernel_size=7, stride=2),
    dict(input_size=(16, 16), in_channels=32, out_channels=64, kernel_size=3, padding=1, groups=4),
    dict(input_size=(20,), in_channels=3, out_channels=6, kernel_size=5, dilation=2, padding="same"),
    dict(input_size=(6, 7, 8), in_channels=2, out_channels=4, kernel_size=3, stride=(1, 2, 1)),
])
@pytest.mark.parametrize("combining", ["position", "factorized"])
def test_counts_equal_real_modules_on_meta(case, bias, combining):
    nd = len(case["input_size"])
    tile = (2,) * nd
    rows = {r.name: r for r in layer_costs(**case, bias=bias, tile_size=tile, regions=tile, rank=3,
                                           combining=combining)}
    args = (case["in_channels"], case["out_channels"], case["kernel_size"], case.get("stride", 1),
            case.get("padding", 0), case.get("dilation", 1), case.get("groups", 1), bias)
    kw = dict(input_size=case["input_size"], device="meta")
    local = getattr(unshared, f"LocallyConnected{nd}d")(*args, **kw)
    conv = getattr(torch.nn, f"Conv{nd}d")(*args, device="meta")
    tiled = getattr(unshared, f"TiledLocallyConnected{nd}d")(*args, **kw, tile_size=tile)
    region = getattr(unshared, f"RegionLocallyConnected{nd}d")(*args, **kw, regions=tile)
    lowrank = getattr(unshared, f"LowRankLocallyConnected{nd}d")(*args, **kw, rank=3, combining=combining)
    n_in = case["in_channels"] * torch.Size(case["input_size"]).numel()
    n_out = case["out_channels"] * torch.Size(local.output_size).numel()
    dense = torch.nn.Linear(n_in, n_out, bias=bias, device="meta")
    for name, module in [("locally connected", local), ("convolution", conv), ("tiled", tiled),
                         ("region-shared", region), ("low-rank", lowrank), ("fully connected", dense)]:
        assert rows[name].parameters == _count(module), name
        assert rows[name].weight_bytes == 4 * _count(module)
    assert rows["locally connected"].macs == rows["convolution"].macs == rows["tiled"].macs


def test_seed_figures_exactly():
    fc, lc, conv = layer_costs((1000, 1000), 1, 1, 10, padding="same")
    assert (fc.parameters, lc.parameters, conv.parameters) == (10**12, 10**8, 100)
    # and the real modules agree, on the meta device
    assert _count(unshared.LocallyConnected2d(1, 1, 10, padding="same", bias=False, input_size=1000,
                                              device="meta")) == 10**8
    assert _count(torch.nn.Linear(10**6, 10**6, bias=False, device="meta")) == 10**12
    rows = layer_costs((128, 128), 1, 256, 5)
    assert rows[1].parameters == 5 * 5 * 256 * 124 * 124 and rows[-1].parameters == 5 * 5 * 256
    fc, lc, conv = layer_costs((3, 3), 1, 4, 2)
    assert (fc.parameters, conv.parameters) == (144, 16)
    assert layer_costs((3, 3), 1, 4, 3)[-1].parameters == 36


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, "same"), (2, 1)])
def test_equivariance_conv_zero_local_not(stride, padding):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 18, dtype=torch.float64)
    conv = torch.nn.Conv2d(3, 4, 3, stride, padding, dtype=torch.float64)
    assert unshared.translation_equivariance_error(conv, x) < 1e-12
    assert unshared.translation_equivariance_error(unshared.from_conv(conv, (20, 18)), x) < 1e-12
    local = unshared.LocallyConnected2d(3, 4, 3, stride, padding, input_size=(20, 18), dtype=torch.float64)
    assert unshared.translation_equivariance_error(local, x) > 0.5
    # a tiled layer is equivariant to shifts by whole tiles only
    tiled = unshared.TiledLocallyConnected2d(3, 4, 3, stride, padding, input_size=(20, 18), tile_size=2,
                                             dtype=torch.float64)
    assert unshared.translation_equivariance_error(tiled, x, shift=2) < 1e-12
    assert unshared.translation_equivariance_error(tiled, x, shift=1) > 0.5
    with pytest.raises(ValueError, match="leaves no output position away from the borders for shift=30"):
        unshared.translation_equivariance_error(conv, x, shift=30)


def test_int_input_size_spreads_over_the_dimensions_of_the_other_sizes():
    rows = {r.name: r.parameters for r in layer_costs((63, 63), 16, 16, 9)}
    for kwargs in (dict(kernel_size=(9, 9)), dict(kernel_size=9, stride=(1, 1)), dict(kernel_size=9, ndim=2),
                   dict(kernel_size=9, padding=(0, 0), tile_size=5)):
        assert {r.name: r.parameters for r in layer_costs(63, 16, 16, **kwargs)}.items() >= rows.items(), kwargs
    # all ints and no ndim: one spatial dimension, as documented
    assert layer_costs(63, 16, 16, 9)[1].note == "55 positions x 2304 weights"
    assert layer_costs(8, 2, 2, 3, ndim=3)[1].parameters == 6 ** 3 * 2 * 2 * 27
    with pytest.raises(ValueError, match=r"sizes of different dimensionality: input_size=\(63, 63\), kernel_size=\(9, 9, 9\)"):
        layer_costs((63, 63), 16, 16, (9, 9, 9))
    with pytest.raises(ValueError, match=r"sizes of different dimensionality: input_size=\(63, 63\), ndim=3"):
        layer_costs((63, 63), 16, 16, 9, ndim=3)
    with pytest.raises(ValueError, match="ndim must be 1, 2 or 3, got ndim=4"):
        layer_costs(63, 16, 16, 9, ndim=4)
