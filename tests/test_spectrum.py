"""Conversions, partially shared and low-rank layers, against the reference and each other."""
import importlib.util
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unshared
from unshared import conversions, lowrank, sharing
from unshared.backends import settings as settings_override
from unshared.modules import LOCALLY_CONNECTED
from conftest import CPU_AUTO, EXAMPLES_SCALE
from configs import Config, configs
from reference import locally_connected_reference

CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
TILED = {1: sharing.TiledLocallyConnected1d, 2: sharing.TiledLocallyConnected2d, 3: sharing.TiledLocallyConnected3d}
REGION = {1: sharing.RegionLocallyConnected1d, 2: sharing.RegionLocallyConnected2d, 3: sharing.RegionLocallyConnected3d}
LOWRANK = {1: lowrank.LowRankLocallyConnected1d, 2: lowrank.LowRankLocallyConnected2d, 3: lowrank.LowRankLocallyConnected3d}


def _conv(cfg):
    return CONV[cfg.nd](cfg.in_channels, cfg.out_channels, cfg.kernel_size, cfg.stride, cfg.padding,
                        cfg.dilation, cfg.groups, bias=cfg.bias is not None, padding_mode=cfg.padding_mode,
                        dtype=torch.float64)


def _args(cfg):
    return (cfg.in_channels, cfg.out_channels, cfg.kernel_size, cfg.stride, cfg.padding, cfg.dilation,
            cfg.groups, cfg.bias is not None, cfg.padding_mode)


def _grads(y, tensors, seed=5):
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype).to(y.device)
    return torch.autograd.grad(y, tensors, gy)


# ----------------------------------------------------------------------------- conversions

@settings(max_examples=80 * EXAMPLES_SCALE)
@given(cfg=configs(layouts=("contiguous",)))
def test_from_conv_computes_the_conv(cfg):
    conv = _conv(cfg)
    layer = conversions.from_conv(conv, cfg.input_size)
    x, _, _ = cfg.tensors(requires_grad=True)
    y_conv, y_local = conv(x), layer(x)
    torch.testing.assert_close(y_local, y_conv)
    # gradients with respect to the input agree; the weight gradient of the conv is the sum over positions
    torch.testing.assert_close(_grads(y_local, x)[0], _grads(y_conv, x)[0])
    gw_local = _grads(layer(x), layer.weight)[0]
    gw_conv = _grads(conv(x), conv.weight)[0]
    torch.testing.assert_close(gw_local.sum(dim=tuple(range(cfg.nd))), gw_conv)
    # and back: exact
    back = conversions.to_conv(layer)
    assert back.max_deviation == 0 and back.relative_deviation == 0
    torch.testing.assert_close(back.conv(x), y_conv)


def test_to_conv_refuses_untied_weights_and_reduces_on_request():
    layer = unshared.LocallyConnected2d(2, 3, 3, input_size=6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"positions hold different filters \(largest difference .*reduce='mean'"):
        conversions.to_conv(layer)
    result = conversions.to_conv(layer, reduce="mean")
    torch.testing.assert_close(result.conv.weight, layer.weight.detach().mean((0, 1)))
    expected = max((layer.weight - result.conv.weight).abs().max().item(),
                   (layer.bias - result.conv.bias.view(3, 1, 1)).abs().max().item())
    assert result.max_deviation == pytest.approx(expected) and result.max_deviation > 0
    assert 0 < result.relative_deviation <= 2
    assert conversions.to_conv(layer, reduce="median").max_deviation > 0
    with pytest.raises(ValueError, match="reduce must be None, 'mean' or 'median', got reduce='max'"):
        conversions.to_conv(layer, reduce="max")
    with pytest.raises(TypeError, match="expects a LocallyConnected1d/2d/3d layer, got Conv2d"):
        conversions.to_conv(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="from_conv expects nn.Conv1d/2d/3d, got Linear"):
        conversions.from_conv(torch.nn.Linear(1, 1), 5)


@settings(max_examples=60 * EXAMPLES_SCALE)
@given(cfg=configs(layouts=("contiguous",), max_batch=2))
def test_to_linear_and_back(cfg):
    layer = {1: unshared.LocallyConnected1d, 2: unshared.LocallyConnected2d, 3: unshared.LocallyConnected3d}[cfg.nd](
        *_args(cfg), input_size=cfg.input_size, shared_bias=cfg.bias == "shared", dtype=torch.float64)
    linear = conversions.to_linear(layer)
    x, _, _ = cfg.tensors(requires_grad=True)
    x = x if cfg.batch is not None else x.unsqueeze(0)
    y_local = layer(x).flatten(1)
    y_linear = linear(x.flatten(1))
    torch.testing.assert_close(y_linear, y_local)
    torch.testing.assert_close(_grads(y_linear, x)[0], _grads(y_local, x)[0])
    if cfg.padding_mode == "zeros":
        back = conversions.from_linear(linear, cfg.in_channels, cfg.out_channels, cfg.kernel_size, cfg.stride,
                                       cfg.padding, cfg.dilation, cfg.groups, input_size=cfg.input_size)
        # taps that only ever read zero padding cannot be recovered: compare the function instead
        torch.testing.assert_close(back(x), layer(x))


def test_to_linear_zeros_outside_receptive_fields_and_size_limit():
    layer = unshared.LocallyConnected1d(1, 1, 2, input_size=4)
    dense = conversions.to_linear(layer).weight.detach()
    assert dense.shape == (3, 4)
    for p in range(3):
        assert torch.equal(dense[p, p:p + 2], layer.weight.detach()[p, 0, 0])
        assert (dense[p, :p] == 0).all() and (dense[p, p + 2:] == 0).all()
    big = unshared.LocallyConnected2d(16, 16, 9, input_size=63, device="meta")
    with pytest.raises(ValueError, match=r"the dense weight would be 48400 x 63504 = 3,073,593,600 elements"):
        conversions.to_linear(big)


def test_from_linear_refuses_dense_weights():
    linear = torch.nn.Linear(8, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="not local: an entry of magnitude .* lies outside every receptive field"):
        conversions.from_linear(linear, 1, 1, 3, input_size=8)
    with pytest.raises(ValueError, match=r"expected a Linear\(8, 6\) for this layer, got Linear\(8, 5\)"):
        conversions.from_linear(torch.nn.Linear(8, 5), 1, 1, 3, input_size=8)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_from_linear_spreads_an_int_input_size_like_the_layers(nd):
    size = (7, 6, 5)[:nd]
    layer = LOCALLY_CONNECTED[nd](2, 3, 3, padding=1, input_size=size, dtype=torch.float64)
    dense = conversions.to_linear(layer)
    x = torch.randn(2, 2, *size, dtype=torch.float64)
    back = conversions.from_linear(dense, 2, 3, 3, padding=1, input_size=size)
    torch.testing.assert_close(back(x), layer(x))
    square = LOCALLY_CONNECTED[nd](2, 3, 3, input_size=5, dtype=torch.float64)
    back = conversions.from_linear(conversions.to_linear(square), 2, 3, 3, input_size=5)  # nd from in_features
    assert back.input_size == (5,) * nd and torch.equal(back.weight, square.weight)
    # a tuple among the other sizes decides too
    back = conversions.from_linear(conversions.to_linear(square), 2, 3, (3,) * nd, input_size=5)
    assert back.input_size == (5,) * nd


def test_from_linear_int_input_size_that_fits_no_dimensionality():
    dense = torch.nn.Linear(2 * 7 * 7, 3 * 5 * 5)
    with pytest.raises(ValueError, match=r"in_features=98 is in_channels=2 times input_size\*\*nd for nd in \[\] "
                                         r"\(of 1, 2, 3\) with input_size=6; pass input_size as a tuple"):
        conversions.from_linear(dense, 2, 3, 3, input_size=6)
    with pytest.raises(ValueError, match=r"for nd in \[1, 2, 3\]"):   # 1 ** nd: every nd fits
        conversions.from_linear(torch.nn.Linear(2, 3), 2, 3, 1, input_size=1)


def test_to_linear_accumulates_taps_that_padding_sends_to_one_input():
    # circular padding on a 2-wide input: the taps at -1 and +1 read the same element
    layer = unshared.LocallyConnected1d(1, 1, 3, padding=1, padding_mode="circular", input_size=2,
                                        bias=False, dtype=torch.float64)
    w = layer.weight.detach()[:, 0, 0]   # (positions, taps)
    dense = conversions.to_linear(layer).weight.detach()
    expected = torch.stack([torch.stack([w[0, 1], w[0, 0] + w[0, 2]]), torch.stack([w[1, 0] + w[1, 2], w[1, 1]])])
    torch.testing.assert_close(dense, expected)


# ----------------------------------------------------------------------------- partial sharing

@st.composite
def sharing_cases(draw):
    cfg = draw(configs(layouts=("contiguous", "channels_last", "noncontiguous"), max_batch=2))
    kind = draw(st.sampled_from(["tiled", "region"]))
    grid = tuple(draw(st.integers(1, o)) for o in cfg.output_size)
    path = draw(st.sampled_from(PATHS))
    return cfg, kind, grid, path


#: how a shared-bank call is computed: auto with every bank as a convolution (where the bank's
#: positions allow it), auto with the locally connected kernel (the compiled one when built), or
#: an explicit backend
PATHS = ["auto-conv", "auto-local", "torch", "composite"] + (["cpu"] if CPU_AUTO == "cpu" else [])


@settings(max_examples=200 * EXAMPLES_SCALE)
@given(case=sharing_cases())
def test_partial_sharing_matches_reference(case):
    cfg, kind, grid, path = case
    cls = (TILED if kind == "tiled" else REGION)[cfg.nd]
    layer = cls(*_args(cfg), input_size=cfg.input_size, shared_bias=cfg.bias == "shared", dtype=torch.float64,
                backend="auto" if path.startswith("auto") else path,
                **({"tile_size": grid} if kind == "tiled" else {"regions": grid}))
    assert layer.weight.shape[:cfg.nd] == grid
    x, _, _ = cfg.tensors(requires_grad=True)
    threshold = 0 if path == "auto-conv" else 10**9
    with settings_override(min_positions_per_conv=threshold):
        y = layer(x)
    w = layer.expanded_weight()
    # the expansion itself: position p uses bank (p mod tile) or its region's bank
    for p in [tuple(0 for _ in grid), tuple(o - 1 for o in cfg.output_size)]:
        if kind == "tiled":
            bank = tuple(pi % t for pi, t in zip(p, grid))
        else:
            bank = tuple(min(r - 1, max(b for b in range(r) if o * b // r <= pi))
                         for pi, o, r in zip(p, cfg.output_size, grid))
        assert torch.equal(w[p], layer.weight[bank])
    ref = locally_connected_reference(x, w, layer.expanded_bias(), **{k: v for k, v in cfg.kwargs().items()})
    torch.testing.assert_close(y, ref)
    params = [x, layer.weight] + ([layer.bias] if layer.bias is not None else [])
    for ours, theirs in zip(_grads(y, params), _grads(ref, params)):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("cls", [TILED[2], REGION[2]])
def test_partial_sharing_reduces_to_conv_and_local(cls):
    key = "tile_size" if cls is TILED[2] else "regions"
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    one = cls(3, 4, 3, 1, 1, input_size=(9, 8), dtype=torch.float64, **{key: 1})
    conv = torch.nn.Conv2d(3, 4, 3, 1, 1, dtype=torch.float64)
    with torch.no_grad():
        one.weight.copy_(conv.weight.unsqueeze(0).unsqueeze(0))
        one.bias.copy_(conv.bias.view(4, 1, 1))
    torch.testing.assert_close(one(x), conv(x))
    full = cls(3, 4, 3, 1, 1, input_size=(9, 8), dtype=torch.float64, **{key: (9, 8)})
    local = unshared.LocallyConnected2d(3, 4, 3, 1, 1, input_size=(9, 8), dtype=torch.float64)
    with torch.no_grad():
        local.weight.copy_(full.weight)
        local.bias.copy_(full.bias)
    torch.testing.assert_close(full(x), local(x))
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in local.parameters())
    assert repr(one).endswith(f"{key}=(1, 1))")
    with pytest.raises(ValueError, match=rf"{key} must not exceed the output size \(9, 8\), got {key}=\(10, 1\)"):
        cls(3, 4, 3, 1, 1, input_size=(9, 8), **{key: (10, 1)})


# ----------------------------------------------------------------------------- low rank

LOW_RANK_BACKENDS = ["auto", "torch", "composite"] + (["cpu"] if CPU_AUTO == "cpu" else [])  # auto: conv


@settings(max_examples=100 * EXAMPLES_SCALE)
@given(cfg=configs(layouts=("contiguous", "channels_last"), max_batch=2), rank=st.integers(1, 3),
       combining=st.sampled_from(["position", "factorized"]), normalize=st.booleans(),
       backend=st.sampled_from(LOW_RANK_BACKENDS))
def test_low_rank_matches_reference(cfg, rank, combining, normalize, backend):
    check_low_rank(cfg, rank, combining, normalize, backend)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
@settings(max_examples=6 * EXAMPLES_SCALE)  # Triton's interpreter is slow: fewer, smaller cases
@given(cfg=configs(tiny=True, max_batch=2), rank=st.integers(1, 3), combining=st.sampled_from(["position", "factorized"]))
def test_low_rank_on_triton_matches_reference(cfg, rank, combining):
    check_low_rank(cfg, rank, combining, True, "triton")


def check_low_rank(cfg, rank, combining, normalize, backend):
    """The layer on ``backend`` against the reference with its expanded filters, forward and gradients."""
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    layer = LOWRANK[cfg.nd](*_args(cfg), input_size=cfg.input_size, rank=rank, combining=combining,
                            normalize=normalize, dtype=torch.float64, backend=backend, device=device)
    with torch.no_grad():  # move away from the convolution it starts as
        for logits in layer.combining_logits:
            logits.normal_()
    x, _, _ = cfg.tensors(requires_grad=True, device=device)
    y = layer(x)
    ref = locally_connected_reference(x, layer.expanded_weight(), layer.bias, **cfg.kwargs())
    torch.testing.assert_close(y, ref)
    params = [x, layer.weight, *layer.combining_logits] + ([layer.bias] if layer.bias is not None else [])
    for ours, theirs in zip(_grads(y, params), _grads(ref, params)):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("normalize", [True, False])
def test_low_rank_starts_as_a_convolution_and_rank_one_is_one(normalize):
    layer = LOWRANK[2](3, 4, 3, padding=1, input_size=(7, 6), rank=4, normalize=normalize, dtype=torch.float64)
    w = layer.expanded_weight()
    assert torch.allclose(w, w[0, 0].expand_as(w))  # the same filters everywhere
    single = LOWRANK[2](3, 4, 3, padding=1, input_size=(7, 6), rank=1, combining="factorized", dtype=torch.float64)
    with torch.no_grad():
        for logits in single.combining_logits:
            logits.normal_()  # softmax over one basis is 1 whatever the logits
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(single.weight[0])
        conv.bias.copy_(single.bias)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(single(x), conv(x))
    # the initial filter has a convolution's spread: basis bound sqrt(rank / fan_in)
    assert layer.weight.abs().max() <= math.sqrt(4 / 27)
    with pytest.raises(ValueError, match="rank must be a positive int, got rank=0"):
        LOWRANK[2](3, 4, 3, input_size=7, rank=0)
    with pytest.raises(ValueError, match="combining must be 'position' or 'factorized', got combining='rows'"):
        LOWRANK[2](3, 4, 3, input_size=7, rank=2, combining="rows")


def test_bank_layout_is_pinned():
    tiled = sharing.TiledLocallyConnected1d(1, 1, 1, input_size=7, tile_size=3)
    assert tiled.bank_index()[0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    region = sharing.RegionLocallyConnected2d(1, 1, 1, input_size=(7, 4), regions=(3, 2))
    rows, cols = region.bank_index()
    assert rows.tolist() == [0, 0, 1, 1, 2, 2, 2] and cols.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("path", ["conv", "banks"])
@pytest.mark.parametrize("cls", [TILED[2], REGION[1]])
def test_partial_sharing_gradcheck_gradgradcheck_and_bfloat16(path, cls):
    nd = cls._nd
    key = "tile_size" if cls in TILED.values() else "regions"
    size = (7, 6)[:nd]
    layer = cls(4, 2, 2, 1, 1, 1, 2, input_size=size, dtype=torch.float64, **{key: 2})
    x = torch.randn(2, 4, *size, dtype=torch.float64, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()

    def f(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

    with settings_override(min_positions_per_conv=0 if path == "conv" else 10**9):
        assert torch.autograd.gradcheck(f, (x, w, b), fast_mode=True)
        assert torch.autograd.gradgradcheck(f, (x, w, b), fast_mode=True)
        half = copy_to(layer, torch.bfloat16)
        xh = x.detach().to(torch.bfloat16).requires_grad_()
        y = half(xh)
        ref = locally_connected_reference(xh.double(), half.expanded_weight().double(),
                                          half.expanded_bias().double(), padding=1, groups=2)
        torch.testing.assert_close(y.double(), ref, rtol=4e-2, atol=4e-2)
        y.float().square().sum().backward()
        assert half.weight.grad.dtype == torch.bfloat16 and torch.isfinite(half.weight.grad.float()).all()


def copy_to(layer, dtype):
    import copy
    return copy.deepcopy(layer).to(dtype)


@pytest.mark.parametrize("cls", [TILED[2], REGION[2]])
def test_partial_sharing_built_on_meta_then_loaded(cls):
    # the bank index is derived from the sizes: meta construction (also under a default-device
    # context), to_empty() and a state dict leave a working layer
    key = "tile_size" if cls in TILED.values() else "regions"
    ref = cls(3, 4, 3, input_size=(12, 12), **{key: 5})
    with torch.device("meta"):
        assert cls(3, 4, 3, input_size=(12, 12), **{key: 5}).position_bank is not None
    layer = cls(3, 4, 3, input_size=(12, 12), device="meta", **{key: 5})
    layer.to_empty(device="cpu")
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(layer(x), ref(x))
    torch.testing.assert_close(layer(x), locally_connected_reference(
        x, ref.expanded_weight(), ref.expanded_bias()).float())


@pytest.mark.parametrize("backend", ["unfold"] + (["cpu"] if CPU_AUTO == "cpu" else []))
@pytest.mark.parametrize("kernel_major", [True, False])
@pytest.mark.parametrize("kind", ["tiled", "region"])
def test_shared_banks_sum_their_positions(kind, kernel_major, backend):
    # the backends that read each position's filters from its bank: bank gradients sum positions
    from test_functional import check_banks_against_reference
    extra = {"tile_size": 2} if kind == "tiled" else {"regions": (2, 1)}
    cls = unshared.TiledLocallyConnected2d if kind == "tiled" else unshared.RegionLocallyConnected2d
    layer = cls(3, 5, 2, padding=1, input_size=(5, 4), dtype=torch.float64, backend=backend, **extra)
    assert layer.position_bank is not None
    if not kernel_major:
        layer.weight = torch.nn.Parameter(layer.weight.detach().contiguous())
    check_banks_against_reference(layer, torch.randn(3, 3, 5, 4, dtype=torch.float64, requires_grad=True),
                                  padding=1)
    layer.zero_grad()
    layer(torch.randn(1, 3, 5, 4, dtype=torch.float64)).sum().backward()
    assert layer.weight.grad.stride() == layer.weight.stride()  # the gradient keeps the weight's layout
