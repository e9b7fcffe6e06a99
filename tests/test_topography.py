"""unshared.topography (All-TNN's cortical sheet and smoothness loss), unshared.models.AllTNN and
examples/topographic.py, against float64 references written as loops over units."""
import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

import unshared
from unshared import topography
from unshared.models import AllTNN

ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-12


def _layer(nd, out_channels, *, bias="position", contiguous=False, seed=0):
    """A float64 layer (3 x 4 positions in 2d, 6 in 1d), kernel-major or (``contiguous``) channel-major."""
    torch.manual_seed(seed)
    cls = {1: unshared.LocallyConnected1d, 2: unshared.LocallyConnected2d}[nd]
    size = {1: 7, 2: (5, 4)}[nd]
    layer = cls(2, out_channels, 2, input_size=size, bias=bias is not None, shared_bias=bias == "shared",
                dtype=torch.float64)
    if contiguous:
        for p in layer.parameters():
            p.data = p.data.contiguous()
    return layer


def reference_sheet(layer, grid=None):
    """Unit by unit: (row, col) is position (row // a, col // b), channel (row % a) * b + col % b."""
    weight, bias = layer.weight, layer.bias
    per_position = bias is not None and bias.dim() == (weight.dim() - 2) // 2 + 1
    C = layer.out_channels
    if weight.dim() == 4:   # 1d: position l, channel c is unit l * C + c
        units = []
        for index in range(weight.shape[0] * C):
            l, c = divmod(index, C)
            f = weight[l, c].flatten()
            units.append(torch.cat([f, bias[c, l].reshape(1)]) if per_position else f)
        return torch.stack(units)
    a, b = grid or topography.default_channel_grid(C)
    H, W = weight.shape[:2]
    rows = []
    for row in range(H * a):
        cols = []
        for col in range(W * b):
            h, w, c = row // a, col // b, (row % a) * b + col % b
            f = weight[h, w, c].flatten()
            cols.append(torch.cat([f, bias[c, h, w].reshape(1)]) if per_position else f)
        rows.append(torch.stack(cols))
    return torch.stack(rows)


def reference_loss(units, directions, circular):
    """(1 - mean over directions of the mean cosine over pairs one step apart) / 2, pair by pair."""
    if units.dim() == 2:
        units = units[None]
    rows, cols = units.shape[:2]
    means = []
    for dr, dc in directions:
        total, count = 0.0, 0
        for r, c in itertools.product(range(rows), range(cols)):
            r2, c2 = r + dr, c + dc
            if circular:
                r2, c2 = r2 % rows, c2 % cols
            elif not (0 <= r2 < rows and 0 <= c2 < cols):
                continue
            u, v = units[r, c], units[r2, c2]
            total = total + (u @ v) / (u.norm().clamp_min(EPS) * v.norm().clamp_min(EPS))
            count += 1
        means.append(total / count)
    return (1 - sum(means) / len(means)) / 2


DIRECTIONS = {4: [(1, 0), (0, 1)], 8: [(1, 0), (0, 1), (1, 1), (1, -1)]}


@pytest.mark.parametrize("nd,channels,bias,contiguous", [
    (2, 4, "position", False), (2, 6, None, True), (2, 7, "shared", False), (2, 12, "position", True),
    (1, 3, "position", False), (1, 2, None, True)])
def test_sheet_is_the_unit_by_unit_layout(nd, channels, bias, contiguous):
    layer = _layer(nd, channels, bias=bias, contiguous=contiguous)
    s = topography.sheet(layer)
    torch.testing.assert_close(s, reference_sheet(layer), rtol=0, atol=0)
    if nd == 2:
        grid = (2, 2) if channels == 4 else (channels, 1)
        torch.testing.assert_close(topography.sheet(layer, channel_grid=grid), reference_sheet(layer, grid),
                                   rtol=0, atol=0)
    g = torch.randn_like(s)
    (s * g).sum().backward()
    params = list(layer.parameters())
    expected = torch.autograd.grad((reference_sheet(layer) * g).sum(), params, allow_unused=True)
    for p, e in zip(params, expected):
        assert (p.grad is None) if e is None else torch.equal(p.grad, e)   # a shared bias is not on the sheet


@pytest.mark.parametrize("neighbours", [4, 8])
@pytest.mark.parametrize("circular", [True, False])
@pytest.mark.parametrize("channels,bias", [(4, "position"), (6, None), (9, "shared"), (7, "position")])
def test_smoothness_loss_equals_the_pairwise_reference_2d(neighbours, circular, channels, bias):
    layer = _layer(2, channels, bias=bias, contiguous=channels == 6)
    loss = topography.smoothness_loss(layer, circular=circular, neighbours=neighbours)
    expected = reference_loss(reference_sheet(layer), DIRECTIONS[neighbours], circular)
    torch.testing.assert_close(loss, expected)
    params = [p for p in layer.parameters() if p.dim() > 1]   # a shared bias is not on the sheet
    grads = torch.autograd.grad(loss, params)
    for p, g, e in zip(params, grads, torch.autograd.grad(expected, params)):
        torch.testing.assert_close(g, e)
        assert g.stride() == p.stride()   # the parameter's layout: accumulated without a copy


@pytest.mark.parametrize("circular", [True, False])
@pytest.mark.parametrize("bias", ["position", None])
def test_smoothness_loss_equals_the_pairwise_reference_1d(circular, bias):
    layer = _layer(1, 3, bias=bias)
    loss = topography.smoothness_loss(layer, circular=circular)
    expected = reference_loss(reference_sheet(layer), [(0, 1)], circular)
    torch.testing.assert_close(loss, expected)
    grads = torch.autograd.grad(loss, list(layer.parameters()))
    for g, e in zip(grads, torch.autograd.grad(expected, list(layer.parameters()))):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("grid,block", [((3, 1), (1, 2)), ((1, 1), (2, 2)), ((2, 3), (1, 1)), ((1, 2), (3, 1))])
def test_tiny_sheets_whose_pairs_coincide(grid, block):
    """A 2-wide sheet pairs (0, 1) right and (1, 0) wrapped; 2 x 2 pairs down-right and down-left
    alike; a 1-high sheet pairs each unit with itself downwards: every pair counts in each of its
    directions."""
    torch.manual_seed(1)
    H, W = grid
    layer = unshared.LocallyConnected2d(3, block[0] * block[1], 2, input_size=(H + 1, W + 1), groups=1,
                                        dtype=torch.float64)
    for neighbours in (4, 8):
        loss = topography.smoothness_loss(layer, neighbours=neighbours, channel_grid=block)
        expected = reference_loss(reference_sheet(layer, block), DIRECTIONS[neighbours], True)
        torch.testing.assert_close(loss, expected)
        for g, e in zip(torch.autograd.grad(loss, [layer.weight, layer.bias]),
                        torch.autograd.grad(expected, [layer.weight, layer.bias])):
            torch.testing.assert_close(g, e)


def test_groups_and_a_larger_sheet():
    torch.manual_seed(3)
    layer = unshared.LocallyConnected2d(6, 6, 2, input_size=(7, 3), groups=3, dtype=torch.float64)
    for circular, neighbours in itertools.product((True, False), (4, 8)):
        loss = topography.smoothness_loss(layer, circular=circular, neighbours=neighbours, channel_grid=(3, 2))
        expected = reference_loss(reference_sheet(layer, (3, 2)), DIRECTIONS[neighbours], circular)
        torch.testing.assert_close(loss, expected)


class _Loss(nn.Module):
    def __init__(self, layer, **options):
        super().__init__()
        self.layer, self.options = layer, options

    def forward(self):
        return topography.smoothness_loss(self.layer, **self.options)


def _loss_of_parameters(layer, **options):
    """The loss as a function of the layer's parameters (for gradcheck)."""
    module = _Loss(layer, **options)
    names = [f"layer.{name}" for name, _ in layer.named_parameters()]
    return lambda *tensors: torch.func.functional_call(module, dict(zip(names, tensors)), ())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # PyTorch loading its forward-mode rules
@pytest.mark.parametrize("nd,options", [(2, {}), (2, {"neighbours": 8, "circular": False}), (1, {})])
def test_gradcheck_reverse_and_forward_mode(nd, options):
    layer = unshared.LocallyConnected2d(2, 4, 2, input_size=(4, 3), dtype=torch.float64) if nd == 2 else \
        unshared.LocallyConnected1d(2, 3, 3, input_size=6, dtype=torch.float64)
    loss = _loss_of_parameters(layer, **options)
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())   # kernel-major kept
    assert torch.autograd.gradcheck(loss, params, check_forward_ad=True, fast_mode=True)
    contiguous = tuple(p.detach().contiguous().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(loss, contiguous, check_forward_ad=True, fast_mode=True)


def test_half_precision_accumulates_in_float32():
    layer = _layer(2, 4)
    expected = topography.smoothness_loss(layer)
    half = layer.to(torch.bfloat16)
    loss = topography.smoothness_loss(half)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, atol=1e-2, rtol=0)
    loss.backward()
    assert half.weight.grad.dtype == torch.bfloat16 and half.weight.grad.stride() == half.weight.stride()


def test_identical_filters_give_zero_and_zero_filters_count_as_orthogonal():
    layer = _layer(2, 4)
    with torch.no_grad():
        layer.weight.copy_(layer.weight[0, 0, 0].expand_as(layer.weight))
        layer.bias.fill_(0.25)
    assert topography.smoothness_loss(layer, neighbours=8).abs().item() < 1e-12
    torch.manual_seed(0)
    layer = _layer(2, 4, bias=None)
    with torch.no_grad():
        layer.weight[1, 2, 3].zero_()
    loss = topography.smoothness_loss(layer)
    torch.testing.assert_close(loss, reference_loss(reference_sheet(layer), DIRECTIONS[4], True))
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_errors_name_the_layer_and_the_value():
    with pytest.raises(TypeError, match="expects a LocallyConnected1d or LocallyConnected2d .* got Conv2d"):
        topography.smoothness_loss(nn.Conv2d(1, 1, 1))
    tiled = unshared.TiledLocallyConnected2d(2, 4, 3, input_size=8, tile_size=2)
    with pytest.raises(TypeError, match="got TiledLocallyConnected2d"):
        topography.sheet(tiled)
    with pytest.raises(TypeError, match="got LocallyConnected3d"):
        topography.sheet(unshared.LocallyConnected3d(1, 4, 1, input_size=2))
    layer = _layer(2, 6)
    with pytest.raises(ValueError, match=r"a \* b = out_channels = 6 of LocallyConnected2d, got channel_grid=\(2, 2\)"):
        topography.sheet(layer, channel_grid=(2, 2))
    with pytest.raises(ValueError, match="neighbours must be 4 or 8 .* got neighbours=6"):
        topography.smoothness_loss(layer, neighbours=6)
    with pytest.raises(ValueError, match="got neighbours=8 for LocallyConnected1d"):
        topography.smoothness_loss(_layer(1, 3), neighbours=8)
    with pytest.raises(ValueError, match="channel_grid=\\(1, 3\\) has no meaning for LocallyConnected1d"):
        topography.sheet(_layer(1, 3), channel_grid=(1, 3))
    with pytest.raises(ValueError, match="the lazy LazyLocallyConnected2d is not initialised yet"):
        topography.smoothness_loss(unshared.LazyLocallyConnected2d(4, 3))
    flat = unshared.LocallyConnected2d(1, 3, 1, input_size=(1, 4))   # a 1 x 12 sheet
    with pytest.raises(ValueError, match="the 1 x 12 sheet of LocallyConnected2d has no neighbouring pairs"):
        topography.smoothness_loss(flat, circular=False, channel_grid=(1, 3))


# ----------------------------------------------------------------------------------------- AllTNN

ALL_TNN_LAYERS = [  # (in, out, kernel, stride, input size, output size)
    (3, 64, 7, 3, 150, 48), (64, 81, 3, 1, 24, 22), (81, 81, 3, 1, 22, 20),
    (81, 256, 3, 1, 10, 8), (256, 256, 3, 1, 8, 6), (256, 2500, 3, 1, 3, 1)]


def test_all_tnn_layers_shapes_and_parameter_counts():
    net = AllTNN(565, device="meta")
    assert len(net.layers) == 6
    total = 0
    for layer, (cin, cout, k, s, size, out) in zip(net.layers, ALL_TNN_LAYERS):
        assert type(layer) is unshared.LocallyConnected2d
        assert (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride) == (cin, cout, (k, k), (s, s))
        assert layer.input_size == (size, size) and layer.output_size == (out, out)
        assert tuple(layer.weight.shape) == (out, out, cout, cin, k, k) and tuple(layer.bias.shape) == (cout, out, out)
        total += layer.weight.numel() + layer.bias.numel()
    assert total == 107_061_896
    assert tuple(net.readout.weight.shape) == (565, 2500)
    assert net(torch.empty(2, 3, 150, 150, device="meta")).shape == (2, 565)


def test_all_tnn_other_input_sizes():
    net = AllTNN(10, input_size=200, device="meta")
    assert [layer.output_size[0] for layer in net.layers] == [65, 30, 28, 12, 10, 3]
    assert net.readout.in_features == 2500 * 9
    with pytest.raises(ValueError, match="input_size must be an int >= 148 .* got input_size=147"):
        AllTNN(10, input_size=147, device="meta")


def test_all_tnn_forward_and_spatial_loss():
    torch.manual_seed(0)
    net = AllTNN(5, input_size=148)
    assert net(torch.randn(1, 3, 148, 148)).shape == (1, 5)
    loss = net.spatial_loss(0.5, layer_factors=[1, 0, 0, 0, 0, 2])
    expected = 0.5 * (topography.smoothness_loss(net.layers[0]) + 2 * topography.smoothness_loss(net.layers[5]))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert net.layers[1].weight.grad is None and net.layers[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="layer_factors must hold 6 numbers, one per locally connected layer, got 2"):
        net.spatial_loss(1.0, layer_factors=[1, 2])


# ---------------------------------------------------------------------------------------- example

def test_topographic_example_runs_quickly(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("topographic_example", ROOT / "examples" / "topographic.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    threads = torch.get_num_threads()
    try:
        results = example.main(["--quick", "--output", str(tmp_path / "sheet.png")])
    finally:
        torch.set_num_threads(threads)   # the example runs on one thread
    assert (tmp_path / "sheet.png").stat().st_size > 0
    assert set(results) == {"without loss", "with loss"}
    smooth, plain = results["with loss"], results["without loss"]
    assert smooth["smoothness_loss"] < 0.5 * plain["smoothness_loss"]
    assert smooth["accuracy"] > 0.8 and plain["accuracy"] > 0.8
