"""Transposed locally connected layers: the adjoint of the locally connected layer (checked against
the float64 reference through autograd), ``nn.ConvTranspose`` when every position holds the same
filters, on every backend, forward and backward."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import unshared
import unshared.functional as UF
from conftest import CPU_AUTO, EXAMPLES_SCALE
from reference import locally_connected_reference

FN = {1: UF.locally_connected_transpose1d, 2: UF.locally_connected_transpose2d, 3: UF.locally_connected_transpose3d}
CONV_T = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}
BACKENDS = ["torch", "unfold", "composite"] + (["cpu"] if CPU_AUTO == "cpu" else [])  # cpu: the compiled kernels, when built
try:
    import triton  # noqa: F401
    BACKENDS.append("triton")
except ImportError:
    pass


@st.composite
def transposed_configs(draw, max_size=5):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    in_channels, out_channels = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    size = tuple(draw(st.integers(1, max_size if nd < 3 else 3)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, (d * (k - 1)) // 2)) for k, d in zip(kernel, dilation))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    batch = draw(st.sampled_from([None, 1, 2]))
    return dict(nd=nd, groups=groups, in_channels=in_channels, out_channels=out_channels, kernel=kernel,
                stride=stride, dilation=dilation, size=size, padding=padding, output_padding=output_padding,
                batch=batch, bias=draw(st.sampled_from([None, "position", "shared"])))


def transposed_reference(x, weight, bias, stride, padding, output_padding, groups, dilation):
    """The adjoint of the float64 locally connected reference: ``d/dz <LC(z), x>`` over the
    transposed output ``z`` (its size from the ConvTranspose formula), plus the bias."""
    nd = weight.dim() // 2 - 1
    grid = weight.shape[:nd]
    out = tuple((i - 1) * s - 2 * p + d * (k - 1) + op + 1 for i, s, p, d, k, op in
                zip(grid, stride, padding, dilation, weight.shape[nd + 2:], output_padding))
    unbatched = x.dim() == nd + 1
    xb = x.unsqueeze(0) if unbatched else x
    z = torch.zeros(xb.shape[0], weight.shape[nd + 1] * groups, *out, dtype=torch.float64, requires_grad=True)
    # the reference layer cannot take extra trailing input (output_padding): crop what it reads
    y = locally_connected_reference(z, weight.double(), None, stride, padding, dilation, groups)
    y = y[(slice(None), slice(None), *(slice(0, g) for g in grid))]
    (result,) = torch.autograd.grad(y, z, xb.double(), create_graph=True)
    if bias is not None:
        result = result + (bias.double() if bias.dim() > 1 else bias.double().view(-1, *(1,) * nd))
    return result.squeeze(0) if unbatched else result


def _tensors(cfg, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    nd = cfg["nd"]
    w = torch.randn(*cfg["size"], cfg["in_channels"], cfg["out_channels"] // cfg["groups"], *cfg["kernel"],
                    generator=gen, dtype=torch.float64)
    shape = (cfg["in_channels"], *cfg["size"]) if cfg["batch"] is None else (cfg["batch"], cfg["in_channels"], *cfg["size"])
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    out = tuple((i - 1) * s - 2 * p + d * (k - 1) + op + 1 for i, s, p, d, k, op in
                zip(cfg["size"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["kernel"], cfg["output_padding"]))
    bias = {None: None, "shared": torch.randn(cfg["out_channels"], generator=gen, dtype=torch.float64),
            "position": torch.randn(cfg["out_channels"], *out, generator=gen, dtype=torch.float64)}[cfg["bias"]]
    return x.to(dtype), w.to(dtype), None if bias is None else bias.to(dtype), nd


def _args(cfg):
    return cfg["stride"], cfg["padding"], cfg["output_padding"], cfg["groups"], cfg["dilation"]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@settings(max_examples=60 * EXAMPLES_SCALE)
@given(cfg=transposed_configs())
def test_matches_the_adjoint_of_the_reference(backend, cfg):
    check_against_reference(cfg, backend)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton is not installed")
@settings(max_examples=6 * EXAMPLES_SCALE)  # Triton's interpreter is slow: fewer, smaller cases
@given(cfg=transposed_configs(max_size=3))
def test_triton_matches_the_adjoint_of_the_reference(cfg):
    check_against_reference(cfg, "triton")


def check_against_reference(cfg, backend):
    x, w, b, nd = _tensors(cfg)
    x, w = x.requires_grad_(), w.requires_grad_()
    y = FN[nd](x, w, b, *_args(cfg), backend=backend)
    want = transposed_reference(x.detach(), w.detach(), b, *_args(cfg))
    torch.testing.assert_close(y, want)
    gy = torch.randn_like(y)
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = transposed_reference(xr, wr, b, *_args(cfg))
    for ours, theirs in zip(torch.autograd.grad(y, (x, w), gy), torch.autograd.grad(ref, (xr, wr), gy)):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_one_filter_everywhere_is_conv_transpose(nd):
    torch.manual_seed(nd)
    conv = CONV_T[nd](4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1).double()
    size = (5, 4, 3)[:nd]
    layer = unshared.from_conv_transpose(conv, size)
    assert layer.weight.shape == (*size, 4, 3, *(3,) * nd)
    x = torch.randn(2, 4, *size, dtype=torch.float64, requires_grad=True)
    y, want = layer(x), conv(x)
    torch.testing.assert_close(y, want)
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, layer.weight), gy)
    gx_c, gw_c = torch.autograd.grad(want, (x, conv.weight), gy)
    torch.testing.assert_close(gx, gx_c)
    torch.testing.assert_close(gw.sum(tuple(range(nd))), gw_c)  # the conv's filters are every position's


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_gradgradcheck(backend):
    layer = unshared.LocallyConnectedTranspose2d(2, 4, (2, 3), stride=(2, 1), padding=(0, 1), output_padding=(1, 0),
                                                 groups=2, input_size=(3, 2), dtype=torch.float64, backend=backend)
    x = torch.randn(2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    f = lambda x, w, b: torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))  # noqa: E731
    inputs = (x, layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_())
    assert gradcheck(f, inputs, fast_mode=True)
    assert gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    layer = unshared.LocallyConnectedTranspose1d(3, 2, 3, stride=2, input_size=6)
    x = torch.randn(4, 3, 6)
    want = layer(x)
    half = layer.to(dtype)
    torch.testing.assert_close(half(x.to(dtype)).float(), want, rtol=3e-2, atol=3e-2)


def test_module_behaviour_lazy_and_sharing():
    layer = unshared.LocallyConnectedTranspose2d(4, 6, 3, 2, 1, 1, 2, input_size=(4, 5), shared_bias=True)
    assert layer.output_size == (8, 10) and layer.bias.shape == (6,)
    assert repr(layer) == ("LocallyConnectedTranspose2d(4, 6, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), "
                           "output_padding=(1, 1), groups=2, input_size=(4, 5), shared_bias=True)")
    assert layer(torch.randn(4, 4, 5)).shape == (6, 8, 10)  # unbatched
    lazy = unshared.LazyLocallyConnectedTranspose2d(6, 3, 2, 1, 1, 2)
    y = lazy(torch.randn(2, 4, 4, 5))
    assert type(lazy) is unshared.LocallyConnectedTranspose2d and y.shape == (2, 6, 8, 10)
    assert lazy.weight.shape == (4, 5, 4, 3, 3, 3) and lazy.bias.shape == (6, 8, 10)
    unshared.share_weights_(lazy, 1.0)
    conv = torch.nn.ConvTranspose2d(4, 6, 3, 2, 1, 1, 2)
    with torch.no_grad():
        conv.weight.copy_(lazy.weight[0, 0])
        conv.bias.copy_(lazy.bias[:, 0, 0])
    x = torch.randn(2, 4, 4, 5)
    torch.testing.assert_close(lazy(x), conv(x), rtol=1e-5, atol=1e-5)


LAZY = {1: unshared.LazyLocallyConnectedTranspose1d, 2: unshared.LazyLocallyConnectedTranspose2d,
        3: unshared.LazyLocallyConnectedTranspose3d}
EAGER = {1: unshared.LocallyConnectedTranspose1d, 2: unshared.LocallyConnectedTranspose2d,
         3: unshared.LocallyConnectedTranspose3d}


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_lazy_infers_channels_and_input_size_and_matches_the_reference(nd):
    size = (4, 3, 2)[:nd]
    lazy = LAZY[nd](6, 3, 2, 1, 1, 2, dtype=torch.float64)  # out_channels, kernel, stride, padding, output_padding, groups
    assert lazy.has_uninitialized_params()
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    y = lazy(x)
    assert type(lazy) is EAGER[nd] and lazy.in_channels == 4 and lazy.input_size == size
    assert lazy.weight.shape == (*size, 4, 3, *(3,) * nd)
    assert lazy.output_size == tuple(2 * i for i in size) and y.shape == (2, 6, *lazy.output_size)
    want = transposed_reference(x, lazy.weight.detach(), lazy.bias.detach(), (2,) * nd, (1,) * nd, (1,) * nd, 2,
                                (1,) * nd)
    torch.testing.assert_close(y, want)
    # initialised as the eager layer: the same bound, the same storage order
    eager = EAGER[nd](4, 6, 3, 2, 1, 1, 2, input_size=size, dtype=torch.float64)
    assert lazy.weight.stride() == eager.weight.stride()
    bound = 1 / (6 // 2 * 3 ** nd) ** 0.5  # per-position fan-in C_out / groups * prod(kernel_size)
    assert 0 < lazy.weight.abs().max() <= bound and eager.weight.abs().max() <= bound


@pytest.mark.parametrize("build,error,match", [
    (lambda: unshared.LocallyConnectedTranspose2d(4, 6, 3, padding_mode="reflect", input_size=4), ValueError,
     r'only padding_mode="zeros" is supported'),
    (lambda: unshared.LocallyConnectedTranspose2d(4, 6, 3, stride=2, output_padding=2, input_size=4), ValueError,
     r"output_padding must be smaller than stride or dilation, got output_padding=\(2, 2\)"),
    (lambda: unshared.LocallyConnectedTranspose1d(4, 6, 3, padding=5, input_size=2), ValueError,
     r"output size \(-6,\) is not positive"),
    (lambda: unshared.LocallyConnectedTranspose1d(4, 6, 3, input_size=None), ValueError, r"input_size is required"),
    (lambda: unshared.LocallyConnectedTranspose1d(4, 6, 3, input_size=5)(torch.randn(2, 4, 6)), ValueError,
     r"built for input_size=\(5,\), got input of spatial size \(6,\)"),
    (lambda: UF.locally_connected_transpose1d(torch.randn(2, 3, 5), torch.randn(5, 4, 2, 3)), ValueError,
     r"expected input with 4 channels"),
    (lambda: unshared.from_conv_transpose(torch.nn.Conv1d(1, 1, 1), 4), TypeError,
     r"from_conv_transpose expects nn.ConvTranspose1d/2d/3d, got Conv1d"),
])
def test_errors_name_the_values(build, error, match):
    with pytest.raises(error, match=match):
        build()
