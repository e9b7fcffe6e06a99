"""The nn.Module layers: construction, init, repr, state_dict, lazy variants, meta device."""
import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings

import unshared
import unshared.functional as UF
from conftest import EXAMPLES_SCALE
from configs import configs
from reference import locally_connected_reference

MODULES = {1: unshared.LocallyConnected1d, 2: unshared.LocallyConnected2d, 3: unshared.LocallyConnected3d}
LAZY = {1: unshared.LazyLocallyConnected1d, 2: unshared.LazyLocallyConnected2d, 3: unshared.LazyLocallyConnected3d}
FN = {1: UF.locally_connected1d, 2: UF.locally_connected2d, 3: UF.locally_connected3d}


def _module(cfg, **extra):
    return MODULES[cfg.nd](cfg.in_channels, cfg.out_channels, cfg.kernel_size, cfg.stride, cfg.padding,
                           cfg.dilation, cfg.groups, cfg.bias is not None, cfg.padding_mode,
                           input_size=cfg.input_size, shared_bias=cfg.bias == "shared",
                           dtype=torch.float64, **extra)


@settings(max_examples=100 * EXAMPLES_SCALE)
@given(cfg=configs())
def test_module_matches_functional_and_reference(cfg):
    layer = _module(cfg)
    assert layer.output_size == cfg.output_size
    assert layer.weight.shape == (*cfg.output_size, cfg.out_channels, cfg.in_channels // cfg.groups,
                                  *cfg.kernel_size)
    x, _, _ = cfg.tensors()
    y = layer(x)
    torch.testing.assert_close(y, FN[cfg.nd](x, layer.weight, layer.bias, **cfg.kwargs()))
    torch.testing.assert_close(y, locally_connected_reference(x, layer.weight, layer.bias, **cfg.kwargs()))


def test_weight_position_is_the_conv_weight_there():
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=torch.float64)
    layer = unshared.LocallyConnected2d(3, 4, 3, 2, 1, input_size=(9, 7), dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(conv.weight.expand_as(layer.weight))
        layer.bias.copy_(conv.bias.view(4, 1, 1).expand_as(layer.bias))
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))


def test_conv_positional_arguments_carry_over():
    # the same positional line as nn.Conv2d, plus input_size
    args = (3, 8, (3, 5), (2, 1), (1, 2), (1, 2), 1, False, "reflect")
    conv = torch.nn.Conv2d(*args)
    layer = unshared.LocallyConnected2d(*args, input_size=(11, 12))
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                 "groups", "padding_mode"):
        assert getattr(layer, name) == getattr(conv, name), name
    assert layer.bias is None
    assert layer(torch.randn(1, 3, 11, 12)).shape == conv(torch.randn(1, 3, 11, 12)).shape


def test_input_size_is_keyword_only():
    with pytest.raises(TypeError, match=r"takes from 4 to 12 positional arguments but 13 were given"):
        unshared.LocallyConnected2d(3, 8, 3, 1, 0, 1, 1, True, "zeros", None, None, (8, 8))
    with pytest.raises(TypeError, match="input_size"):
        unshared.LocallyConnected2d(3, 8, 3)


@pytest.mark.parametrize("shared_bias", [False, True])
def test_init_uses_per_position_fan_in(shared_bias):
    torch.manual_seed(0)
    layer = unshared.LocallyConnected2d(6, 4, (3, 5), groups=2, input_size=(20, 20), shared_bias=shared_bias)
    bound = 1 / math.sqrt(6 // 2 * 3 * 5)  # kaiming_uniform(a=sqrt(5)) bound with fan_in = C/g * kh * kw
    assert layer.weight.abs().max() <= bound
    assert layer.weight.abs().max() > 0.99 * bound  # 16 * 4 * 3 * 15 * 16 draws reach the edge
    assert layer.bias.abs().max() <= bound
    if not shared_bias:  # 4 * 18 * 16 draws reach the edge
        assert layer.bias.abs().max() > 0.95 * bound
    assert layer.bias.shape == ((4,) if shared_bias else (4, 18, 16))
    # the same bound as nn.Conv2d with the same arguments
    conv = torch.nn.Conv2d(6, 4, (3, 5), groups=2)
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound


def test_reset_parameters_redraws():
    layer = unshared.LocallyConnected1d(2, 3, 3, input_size=10)
    before = layer.weight.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.weight)


@pytest.mark.parametrize("nd,kwargs,expected", [
    (2, dict(), "LocallyConnected2d(3, 8, kernel_size=(3, 3), stride=(1, 1), input_size=(10, 12))"),
    (2, dict(stride=2, padding=1, dilation=2, groups=1, bias=False, padding_mode="circular",
             shared_bias=False),
     "LocallyConnected2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(2, 2), "
     "bias=False, padding_mode=circular, input_size=(10, 12))"),
    (1, dict(padding="same", shared_bias=True),
     "LocallyConnected1d(3, 8, kernel_size=(3,), stride=(1,), padding=same, input_size=(10,), shared_bias=True)"),
])
def test_repr(nd, kwargs, expected):
    size = (10, 12)[:nd]
    assert repr(MODULES[nd](3, 8, 3, input_size=size, **kwargs)) == expected


def test_state_dict_round_trip():
    a = unshared.LocallyConnected2d(3, 4, 3, groups=1, input_size=(8, 9))
    b = unshared.LocallyConnected2d(3, 4, 3, groups=1, input_size=(8, 9))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 8, 9)
    torch.testing.assert_close(a(x), b(x))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    c = unshared.LocallyConnected2d(3, 4, 3, input_size=(8, 9))
    c.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(a(x), c(x))
    # the storage layout survives loading, copying and dtype changes
    for layer in (c, copy.deepcopy(a), a.to(torch.float64)):
        assert layer.weight.stride() == unshared.LocallyConnected2d(3, 4, 3, input_size=(8, 9)).weight.stride()


def test_state_dict_for_another_input_size_is_refused():
    a = unshared.LocallyConnected2d(3, 4, 3, input_size=(8, 9))
    b = unshared.LocallyConnected2d(3, 4, 3, input_size=(10, 9))
    with pytest.raises(ValueError, match=r"output size \(6, 7\).*output size \(8, 7\).*input_size=\(10, 9\)"):
        b.load_state_dict(a.state_dict())


def test_factory_kwargs_and_meta_device():
    layer = unshared.LocallyConnected2d(3, 4, 3, input_size=8, dtype=torch.float64)
    assert layer.weight.dtype == layer.bias.dtype == torch.float64
    # a layer with over 10^8 parameters is free to build on the meta device
    big = unshared.LocallyConnected2d(1, 1, 10, input_size=(1009, 1009), device="meta")
    assert sum(p.numel() for p in big.parameters()) == 1000 * 1000 * 100 + 1000 * 1000
    assert big.weight.is_meta
    y = big(torch.empty(2, 1, 1009, 1009, device="meta"))
    assert y.shape == (2, 1, 1000, 1000) and y.is_meta


def test_meta_then_to_empty_gives_a_working_layer():
    layer = unshared.LocallyConnected1d(2, 3, 3, input_size=9, device="meta")
    layer.to_empty(device="cpu")
    layer.reset_parameters()
    x = torch.randn(4, 2, 9)
    torch.testing.assert_close(layer(x), locally_connected_reference(x, layer.weight, layer.bias).float())


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_lazy_infers_channels_and_input_size(nd):
    size = (7, 6, 5)[:nd]
    lazy = LAZY[nd](4, 2, stride=1, padding=1, groups=2, dtype=torch.float64)
    assert lazy.has_uninitialized_params()
    x = torch.randn(3, 6, *size, dtype=torch.float64)
    y = lazy(x)
    assert type(lazy) is MODULES[nd]
    assert lazy.in_channels == 6 and lazy.input_size == size
    assert lazy.weight.shape == (*lazy.output_size, 4, 3, *(2,) * nd)
    torch.testing.assert_close(y, locally_connected_reference(x, lazy.weight, lazy.bias, padding=1, groups=2))
    bound = 1 / math.sqrt(3 * 2 ** nd)
    assert 0 < lazy.weight.abs().max() <= bound
    eager = MODULES[nd](6, 4, 2, 1, 1, 1, 2, input_size=size, dtype=torch.float64)
    assert eager.weight.stride() == lazy.weight.stride()


def test_lazy_unbatched_and_checks_groups():
    lazy = unshared.LazyLocallyConnected2d(4, 3, shared_bias=True)
    assert lazy(torch.randn(5, 6, 6)).shape == (4, 4, 4)
    assert lazy.bias.shape == (4,)
    bad = unshared.LazyLocallyConnected2d(4, 3, groups=2)
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        bad(torch.randn(1, 3, 6, 6))


def test_module_backward_gives_reference_gradients():
    layer = unshared.LocallyConnected2d(4, 6, 3, 2, 1, groups=2, input_size=(7, 8), dtype=torch.float64)
    x = torch.randn(3, 4, 7, 8, dtype=torch.float64, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    layer(x).square().sum().backward()
    xr = x.detach().clone().requires_grad_()
    locally_connected_reference(xr, w, b, stride=2, padding=1, groups=2).square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(layer.weight.grad, w.grad)
    torch.testing.assert_close(layer.bias.grad, b.grad)
    assert layer.weight.grad.stride() == layer.weight.stride()


def test_optimizer_step_and_sequential_stack():
    # DeepFace-like stack: L4 -> L5 -> L6 at small channel counts
    net = torch.nn.Sequential(
        unshared.LocallyConnected2d(2, 3, 5, input_size=21), torch.nn.ReLU(),
        unshared.LocallyConnected2d(3, 3, 3, stride=2, input_size=17), torch.nn.ReLU(),
        unshared.LocallyConnected2d(3, 2, 3, input_size=8), torch.nn.Flatten(), torch.nn.Linear(72, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(8, 2, 21, 21)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = net(x).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5


@pytest.mark.parametrize("contiguous", [False, True])
def test_weight_gradient_has_the_weight_layout(contiguous):
    # kernel-major by default (the fast CPU layout); a contiguous weight (FSDP2 needs one) keeps
    # contiguous gradients, so that DDP buckets and optimizers see matching strides
    layer = unshared.LocallyConnected2d(3, 4, 3, padding=1, input_size=(5, 6), dtype=torch.float64)
    assert unshared._utils.is_kernel_major(layer.weight) and not layer.weight.is_contiguous()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    expected = locally_connected_reference(x, layer.weight, layer.bias, padding=1)
    if contiguous:
        layer.weight.data = layer.weight.data.contiguous()
    y = layer(x)
    torch.testing.assert_close(y, expected)
    y.square().sum().backward()
    assert layer.weight.grad.stride() == layer.weight.stride()
