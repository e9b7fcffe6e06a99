"""share_weights_(period=...) (Pogodin et al.'s sharing within residue classes) against a plain
loop over the classes, and the sharing schedule share_every."""
import itertools
import re

import pytest
import torch
from torch import nn

import unshared


def reference_share(tensor, grid_dims, period, strength):
    """Position by position: every member of a residue class moves toward the class mean (float64)."""
    t = tensor.detach().double()
    out = t.clone()
    grid = [t.shape[d] for d in grid_dims]
    classes = {}
    for coords in itertools.product(*(range(n) for n in grid)):
        classes.setdefault(tuple(c % p for c, p in zip(coords, period)), []).append(coords)

    def index(coords):
        full = [slice(None)] * t.dim()
        for d, c in zip(grid_dims, coords):
            full[d] = c
        return tuple(full)

    for members in classes.values():
        mean = sum(t[index(m)] for m in members) / len(members)
        for m in members:
            out[index(m)] = (1 - strength) * t[index(m)] + strength * mean
    return out


def _contiguous(layer):
    for p in layer.parameters():
        p.data = p.data.contiguous()   # the channel-major layout
    return layer


LAYERS = {
    "1d-11-positions": (lambda: unshared.LocallyConnected1d(3, 2, 2, input_size=12), 3),
    "1d-shared-bias": (lambda: unshared.LocallyConnected1d(2, 2, 3, input_size=10, shared_bias=True), 4),
    "2d-7x5": (lambda: unshared.LocallyConnected2d(3, 4, 3, input_size=(9, 7)), (3, 2)),
    "2d-groups-period-int": (lambda: unshared.LocallyConnected2d(4, 6, 2, groups=2, input_size=(6, 7)), 2),
    "2d-period-beyond-grid": (lambda: unshared.LocallyConnected2d(2, 3, 2, input_size=(5, 4), bias=False), (2, 10)),
    "3d-4x3x5": (lambda: unshared.LocallyConnected3d(2, 3, 2, input_size=(5, 4, 6)), (2, 2, 3)),
    "transposed-2d": (lambda: unshared.LocallyConnectedTranspose2d(3, 4, 3, input_size=(5, 4)), 2),
    "transposed-1d": (lambda: unshared.LocallyConnectedTranspose1d(2, 3, 2, stride=2, input_size=7), 3),
}


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("layout", ["kernel-major", "channel-major"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_period_equals_the_loop_over_residue_classes(name, layout, strength):
    torch.manual_seed(0)
    make, period = LAYERS[name]
    layer = make().double()
    if layout == "channel-major":
        _contiguous(layer)
    nd = len(layer.kernel_size)
    periods = (period,) * nd if isinstance(period, int) else period
    expected_weight = reference_share(layer.weight, range(nd), periods, strength)
    bias = layer.bias
    per_position = bias is not None and bias.dim() == nd + 1
    expected_bias = (reference_share(bias, range(1, nd + 1), periods, strength) if per_position
                     else None if bias is None else bias.detach().clone())
    strides, pointer = layer.weight.stride(), layer.weight.data_ptr()
    assert unshared.share_weights_(layer, strength, period=period) is layer
    assert layer.weight.stride() == strides and layer.weight.data_ptr() == pointer   # in place, layout kept
    torch.testing.assert_close(layer.weight, expected_weight)
    if bias is not None:
        torch.testing.assert_close(layer.bias, expected_bias)


def test_pogodin_instant_sharing_is_period_kernel_size_and_leaves_a_tiled_layer():
    """``period=kernel_size`` at strength 1: positions k apart hold the same filters, which is the
    tiled layer with tile_size = k (Pogodin et al.'s ``share_weights_instantly``)."""
    torch.manual_seed(1)
    layer = unshared.LocallyConnected2d(3, 4, 3, input_size=(9, 7), dtype=torch.float64)   # 7 x 5 positions
    unshared.share_weights_(layer, period=layer.kernel_size)
    w = layer.weight
    for i, j in itertools.product(range(3), range(3)):
        block = w[i::3, j::3]
        assert torch.equal(block, block[:1, :1].expand_as(block))
    tiled = unshared.TiledLocallyConnected2d(3, 4, 3, input_size=(9, 7), tile_size=3, dtype=torch.float64)
    with torch.no_grad():
        tiled.weight.copy_(w[:3, :3])
        tiled.bias.copy_(layer.bias[:, :3, :3])
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), tiled(x))


def test_period_one_is_the_mean_over_all_positions_and_none_is_unchanged():
    torch.manual_seed(2)
    a = unshared.LocallyConnected2d(2, 3, 2, input_size=(6, 5), dtype=torch.float64)
    b = unshared.LocallyConnected2d(2, 3, 2, input_size=(6, 5), dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    unshared.share_weights_(a, 0.3, period=1)
    unshared.share_weights_(b, 0.3)
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.bias, b.bias)


def test_half_precision_sums_in_float32():
    torch.manual_seed(3)
    layer = unshared.LocallyConnected1d(4, 8, 3, input_size=300)   # 298 positions
    expected = reference_share(layer.weight, [0], [7], 1.0)
    layer.bfloat16()
    unshared.share_weights_(layer, period=7)
    assert layer.weight.dtype == torch.bfloat16
    torch.testing.assert_close(layer.weight.double(), expected, atol=1e-2, rtol=1e-2)


def test_period_errors_name_the_value_and_the_layer():
    layer = unshared.LocallyConnected2d(2, 2, 3, input_size=6)
    for bad in (0, (2, 0), -1):
        message = rf"period must be at least 1 .* got period={re.escape(repr(bad))} for LocallyConnected2d"
        with pytest.raises(ValueError, match=message):
            unshared.share_weights_(layer, period=bad)
    for bad in ((2, 2, 2), (2,), 2.0, True, (2, "2"), "22"):
        with pytest.raises(ValueError, match=r"period must be None, an int or 2 ints \(one per spatial dimension "
                                             r"of LocallyConnected2d\), got period="):
            unshared.share_weights_(layer, period=bad)
    tiled = unshared.TiledLocallyConnected2d(2, 2, 3, input_size=8, tile_size=2)
    with pytest.raises(TypeError, match="period=2 has no meaning for TiledLocallyConnected2d: its weight holds"):
        unshared.share_weights_(tiled, period=2)
    region = unshared.RegionLocallyConnected1d(2, 2, 3, input_size=8, regions=2)
    with pytest.raises(TypeError, match="has no meaning for RegionLocallyConnected1d"):
        unshared.share_weights_(region, period=2)
    low = unshared.LowRankLocallyConnected2d(2, 2, 3, input_size=6, rank=2)
    with pytest.raises(TypeError, match="LowRankLocallyConnected2d is not supported"):
        unshared.share_weights_(low, period=2)


# ------------------------------------------------------------------------------------ share_every

def _training(every, **options):
    torch.manual_seed(4)
    layer = unshared.LocallyConnected1d(2, 3, 3, input_size=12, dtype=torch.float64)   # 10 positions
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    schedule = unshared.share_every(optimizer, [layer], every, **options)
    return layer, optimizer, schedule


def _step(layer, optimizer):
    optimizer.zero_grad()
    layer(torch.randn(4, 2, 12, dtype=torch.float64)).square().mean().backward()
    optimizer.step()


def _is_shared(layer, period=None):
    w = layer.weight
    if period is None:
        return torch.equal(w, w[:1].expand_as(w))
    return all(torch.equal(w[r::period], w[r:r + 1].expand_as(w[r::period])) for r in range(period))


def test_share_every_shares_after_exactly_every_kth_step():
    layer, optimizer, schedule = _training(3, period=2)
    shared = []
    for step in range(1, 10):
        _step(layer, optimizer)
        shared.append(_is_shared(layer, 2))
        assert schedule.steps == step
    assert shared == [False, False, True] * 3
    assert schedule.state_dict() == {"steps": 9}
    schedule.remove()
    for _ in range(3):
        _step(layer, optimizer)
        assert not _is_shared(layer, 2)
    assert schedule.steps == 9


def test_share_every_strength_and_a_single_layer():
    torch.manual_seed(5)
    layer = unshared.LocallyConnected1d(2, 3, 3, input_size=12, dtype=torch.float64)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    schedule = unshared.share_every(optimizer, layer, 1, strength=0.5)
    before = layer.weight.detach().clone()
    optimizer.step()   # no gradients: SGD leaves the weights, the hook still runs
    torch.testing.assert_close(layer.weight, 0.5 * before + 0.5 * before.mean(0, keepdim=True))
    schedule.remove()


def test_a_resumed_run_continues_the_count():
    layer, optimizer, schedule = _training(4)
    for _ in range(6):
        _step(layer, optimizer)
    state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
    schedule.remove()
    resumed_layer, resumed_optimizer, resumed = _training(4)
    resumed_optimizer.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state["schedule"])
    assert resumed.steps == 6
    _step(resumed_layer, resumed_optimizer)
    assert not _is_shared(resumed_layer)
    _step(resumed_layer, resumed_optimizer)   # step 8
    assert _is_shared(resumed_layer)
    with pytest.raises(ValueError, match=r"expects \{'steps': a count >= 0\}, got \{'steps': -1\}"):
        resumed.load_state_dict({"steps": -1})
    assert "ShareSchedule(every=4, steps=8" in repr(resumed)


def test_share_every_errors():
    layer = unshared.LocallyConnected2d(2, 2, 3, input_size=6)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=rf"every must be an int >= 1 .*, got every={bad!r}"):
            unshared.share_every(optimizer, [layer], bad)
    with pytest.raises(ValueError, match="layers is empty"):
        unshared.share_every(optimizer, [], 10)
    with pytest.raises(TypeError, match=r"expects a locally connected .* got Conv2d \(layers\[1\]\)"):
        unshared.share_every(optimizer, [layer, nn.Conv2d(1, 1, 1)], 10)
    tiled = unshared.TiledLocallyConnected2d(2, 2, 3, input_size=8, tile_size=2)
    with pytest.raises(TypeError, match=r"period=3 has no meaning for TiledLocallyConnected2d.*\(layers\[0\]\)"):
        unshared.share_every(optimizer, [tiled], 10, period=3)
    with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\], got strength=2"):
        unshared.share_every(optimizer, [layer], 10, strength=2)
    with pytest.raises(TypeError, match="share_every expects a torch.optim.Optimizer, got list"):
        unshared.share_every([], [layer], 10)
    lazy = unshared.LazyLocallyConnected2d(2, 3)   # accepted now: it initialises on its first forward
    schedule = unshared.share_every(torch.optim.SGD([torch.zeros(1, requires_grad=True)]), [lazy], 1)
    schedule.remove()
