"""untie (conv nets -> locally connected) and share_weights_ (back toward a convolution)."""
import pytest
import torch
from torch import nn

import unshared
from reference import locally_connected_reference


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect", groups=2)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x):
        return x + self.norm(self.conv(x)).relu()


class Net(nn.Module):
    """Sequential and nested modules; strides, dilation, groups, padding modes, with and without bias."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), nn.ReLU())
        self.body = nn.ModuleDict({"block": Block()})
        self.head = nn.Sequential(nn.Conv2d(4, 6, 3, stride=(2, 1), dilation=2, padding=2, padding_mode="circular"),
                                  nn.Conv2d(6, 6, 2, padding="same"), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Dropout(0.5), nn.Linear(6, 5))

    def forward(self, x):
        return self.head(self.body["block"](self.stem(x)))


def _snapshot(model):
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_function(a, b, x):
    x = x.clone().requires_grad_()
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    g = torch.randn_like(ya)
    torch.testing.assert_close(torch.autograd.grad(ya, x, g)[0], torch.autograd.grad(yb, x, g)[0])


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_untie_computes_the_same_function_and_leaves_the_model_alone():
    torch.manual_seed(0)
    net = Net().double()
    x = torch.randn(2, 3, 13, 11, dtype=torch.float64)
    net(x)  # BatchNorm running statistics away from their initial values
    net.eval()
    net.body["block"].train()  # mixed modes are restored module by module
    before = _snapshot(net)
    untied = unshared.untie(net, x)
    assert _snapshot(net)[0] == before[0]
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[1][key]), key
    kinds = {name: type(m).__name__ for name, m in untied.named_modules()}
    assert kinds["stem.0"] == kinds["body.block.conv"] == kinds["head.0"] == kinds["head.1"] == "LocallyConnected2d"
    assert untied.stem[0].input_size == (13, 11) and untied.body["block"].conv.input_size == (7, 6)
    assert untied.stem[0].bias is None and untied.body["block"].conv.padding_mode == "reflect"
    assert [m.training for m in untied.modules()] == [m.training for m in net.modules()]
    # running statistics unchanged by the size-finding pass (it runs in eval mode)
    torch.testing.assert_close(untied.body["block"].norm.running_mean, net.body["block"].norm.running_mean)
    net.eval(), untied.eval()
    _assert_same_function(untied, net, x)
    # the untied layers are truly per-position: the reference with their weights agrees
    layer = untied.head[0]
    xin = torch.randn(2, 4, *layer.input_size, dtype=torch.float64)
    ref = locally_connected_reference(nn.functional.pad(xin, (2, 2, 2, 2), mode="circular"), layer.weight,
                                      layer.bias, stride=(2, 1), dilation=2)
    torch.testing.assert_close(layer(xin), ref)


@pytest.mark.parametrize("nd", [1, 3])
def test_untie_1d_and_3d(nd):
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[nd]
    net = nn.Sequential(conv(2, 3, 3, padding=1, padding_mode="replicate"), nn.Tanh(),
                        conv(3, 2, 2, stride=2, groups=1, bias=False)).double()
    x = torch.randn(2, 2, *(9, 6, 5)[:nd], dtype=torch.float64)
    untied = unshared.untie(net, x)
    assert type(untied[0]).__name__ == type(untied[2]).__name__ == f"LocallyConnected{nd}d"
    _assert_same_function(untied, net, x)
    # unbatched input gives the same sizes
    assert unshared.untie(net, x[0])[2].input_size == untied[2].input_size


def test_untie_include_subset_and_bad_names():
    net = Net()
    x = torch.randn(2, 3, 13, 11)
    untied = unshared.untie(net, x, include=["head.0"])
    assert type(untied.head[0]).__name__ == "LocallyConnected2d"
    assert type(untied.stem[0]) is type(untied.head[1]) is nn.Conv2d
    assert type(unshared.untie(net, x, include="stem.0").stem[0]).__name__ == "LocallyConnected2d"
    with pytest.raises(ValueError, match=r"include names 'head\.7', which is not a module of the model "
                                         r"\(its convolutions: 'body\.block\.conv', 'head\.0'"):
        unshared.untie(net, x, include=["head.0", "head.7"])
    with pytest.raises(TypeError, match=r"include names 'head\.5', a Linear, not an nn\.Conv1d/2d/3d"):
        unshared.untie(net, x, include=["head.5"])


class TwoScales(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.spare = nn.Conv2d(1, 1, 1)   # never called

    def forward(self, x, twice=True):
        y = self.conv(x).mean()
        return y + self.conv(x[..., ::2, ::2]).mean() if twice else y


def test_untie_refuses_two_input_sizes_and_warns_about_unreached_convs():
    x = torch.randn(1, 1, 8, 6)
    with pytest.raises(ValueError, match=r"'conv' is called on inputs of spatial sizes \[\(4, 3\), \(8, 6\)\]"):
        unshared.untie(TwoScales(), x)
    with pytest.warns(UserWarning, match="example_input never reaches 'spare'; left as a convolution"):
        untied = unshared.untie(TwoScales(), (x, False))   # a tuple: the positional arguments
    assert type(untied.spare) is nn.Conv2d and untied.conv.input_size == (8, 6)
    with pytest.raises(ValueError, match="example_input never reaches 'spare', so its input size is unknown"):
        unshared.untie(TwoScales(), (x, False), include=["spare"])


def test_untie_shared_registration_root_conv_subclass_and_frozen_parameters():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    conv.weight.requires_grad_(False)
    twice = nn.Sequential(conv, nn.ReLU(), conv)  # one conv registered twice, same input size
    x = torch.randn(1, 2, 5, 5)
    untied = unshared.untie(twice, x)
    assert untied[0] is untied[2] and type(untied[0]).__name__ == "LocallyConnected2d"
    assert not untied[0].weight.requires_grad and untied[0].bias.requires_grad
    torch.testing.assert_close(untied(x), twice(x))
    root = unshared.untie(conv, x)  # the model is the convolution itself
    assert root.input_size == (5, 5) and type(conv) is nn.Conv2d

    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.warns(UserWarning, match="'0' is a MyConv, not exactly an nn.Conv1d/2d/3d; left as is"):
        kept = unshared.untie(nn.Sequential(MyConv(2, 2, 1)), x)
    assert type(kept[0]) is MyConv
    with pytest.raises(TypeError, match="'0' is a MyConv, a subclass of an nn.Conv"):
        unshared.untie(nn.Sequential(MyConv(2, 2, 1)), x, include=["0"])
    # a lazy conv is materialised by the size-finding pass, then untied
    lazy = unshared.untie(nn.Sequential(nn.LazyConv2d(3, 3)), x)
    assert type(lazy[0]).__name__ == "LocallyConnected2d" and lazy[0].in_channels == 2


def test_untied_model_trains_and_round_trips_its_state_dict():
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(4, 3, 13, 11)
    untied = unshared.untie(net, x)
    other = unshared.untie(Net(), x)
    other.load_state_dict(untied.state_dict())
    torch.testing.assert_close(other.eval()(x), untied.eval()(x))
    untied.train()
    optimizer = torch.optim.SGD(untied.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(untied(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    w = untied.head[0].weight
    assert not torch.equal(w[0, 0], w[1, 2])  # positions have moved apart
    assert torch.isfinite(untied(x)).all()


# ----------------------------------------------------------------------------- share_weights_

def _layers():
    kw = dict(dtype=torch.float64)
    yield unshared.LocallyConnected2d(4, 6, 3, padding=1, groups=2, input_size=(7, 5), **kw)
    yield unshared.LocallyConnected1d(3, 2, 2, stride=2, input_size=9, shared_bias=True, **kw)
    yield unshared.LocallyConnected3d(2, 3, 2, padding_mode="circular", padding=1, input_size=(3, 4, 3), **kw)


@pytest.mark.parametrize("layer", list(_layers()), ids=["2d", "1d-shared-bias", "3d"])
def test_share_weights_moves_toward_the_mean_and_one_is_a_convolution(layer):
    nd = layer._nd
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    strides, ptr = layer.weight.stride(), layer.weight.data_ptr()
    mean = w0.mean(tuple(range(nd)), keepdim=True)
    assert unshared.share_weights_(layer, 0.25) is layer
    torch.testing.assert_close(layer.weight, 0.75 * w0 + 0.25 * mean)
    assert layer.weight.stride() == strides and layer.weight.data_ptr() == ptr  # layout kept, in place
    if layer.shared_bias:
        assert torch.equal(layer.bias, b0)
    else:
        torch.testing.assert_close(layer.bias, 0.75 * b0 + 0.25 * b0.mean(tuple(range(1, nd + 1)), keepdim=True))
    unshared.share_weights_(layer, 0.0)
    torch.testing.assert_close(layer.weight, 0.75 * w0 + 0.25 * mean)
    unshared.share_weights_(layer)
    torch.testing.assert_close(layer.weight, mean.expand_as(w0))  # the mean is unchanged by each step
    conv, deviation, relative = unshared.to_conv(layer)
    assert deviation == 0 and relative == 0
    x = torch.randn(2, layer.in_channels, *layer.input_size, dtype=torch.float64, requires_grad=True)
    y, yc = layer(x), conv(x)
    torch.testing.assert_close(y, yc)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(yc.sum(), x)[0])


@pytest.mark.parametrize("kind", ["tiled", "region"])
def test_share_weights_on_partial_sharing_averages_banks(kind):
    key = {"tiled": "tile_size", "region": "regions"}[kind]
    cls = {"tiled": unshared.TiledLocallyConnected2d, "region": unshared.RegionLocallyConnected2d}[kind]
    layer = cls(3, 4, 3, padding=1, input_size=(8, 7), dtype=torch.float64, **{key: (3, 2)})
    banks = layer.weight.detach().clone()
    unshared.share_weights_(layer, 0.5)
    torch.testing.assert_close(layer.weight, 0.5 * banks + 0.5 * banks.mean((0, 1), keepdim=True))
    unshared.share_weights_(layer)
    conv = nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(layer.weight[0, 0])
        conv.bias.copy_(layer.bias[:, 0, 0])
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))


def test_share_weights_refuses_other_modules_and_bad_strength():
    low = unshared.LowRankLocallyConnected2d(2, 2, 3, input_size=6, rank=3)
    with pytest.raises(TypeError, match="LowRankLocallyConnected2d is not supported: its weight holds 3 basis"):
        unshared.share_weights_(low)
    with pytest.raises(TypeError, match="expects a locally connected \\(or transposed\\), tiled or region layer, got Conv2d"):
        unshared.share_weights_(nn.Conv2d(1, 1, 1))
    layer = unshared.LocallyConnected1d(1, 1, 1, input_size=3)
    for bad in (-0.1, 1.5, float("nan"), True, "1"):
        with pytest.raises(ValueError, match=rf"strength must be a number in \[0, 1\], got strength={bad!r}"):
            unshared.share_weights_(layer, bad)
    with pytest.raises(ValueError, match="the lazy LazyLocallyConnected2d is not initialised yet"):
        unshared.share_weights_(unshared.LazyLocallyConnected2d(2, 3))


def test_share_weights_works_for_any_registered_position_leading_layer(monkeypatch):
    """The rule is generic: the leading ``nd`` weight dimensions are positions (``nd`` from ``kernel_size``)."""
    from unshared import tying

    class PositionsFirst(nn.Module):
        kernel_size = (3, 3)

        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 4, 2, 5, 3, 3, dtype=torch.float64))
            self.bias = nn.Parameter(torch.randn(5, 6, 8, dtype=torch.float64))

    monkeypatch.setattr(tying, "SHAREABLE", (*tying.SHAREABLE, PositionsFirst))
    layer = PositionsFirst()
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    unshared.share_weights_(layer, 1)
    assert torch.allclose(layer.weight, w.mean((0, 1)).expand_as(w))
    assert torch.allclose(layer.bias, b.mean((1, 2), keepdim=True).expand_as(b))


def test_untie_then_share_back_gives_the_original_convolutions():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2)).double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    untied = unshared.untie(net, x)
    for i in (0, 2):
        layer = untied[i]
        with torch.no_grad():   # unshared updates that cancel over positions
            noise = torch.randn_like(layer.weight)
            layer.weight.add_(noise - noise.mean((0, 1)))
        assert unshared.to_conv(layer, reduce="mean").max_deviation > 0.1
        conv = unshared.to_conv(unshared.share_weights_(layer)).conv
        torch.testing.assert_close(conv.weight, net[i].weight)
        torch.testing.assert_close(conv.bias, net[i].bias)
