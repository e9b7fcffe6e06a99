"""Bad input gets a clear ValueError/TypeError naming the offending values."""
import pytest
import torch

import unshared
import unshared.functional as UF

LC2 = unshared.LocallyConnected2d


def _w(*shape):
    return torch.randn(*shape)


@pytest.mark.parametrize("build,error,match", [
    (lambda: LC2(3, 8, 3, groups=2, input_size=8), ValueError, r"in_channels must be divisible by groups.*in_channels=3, groups=2"),
    (lambda: LC2(4, 6, 3, groups=4, input_size=8), ValueError, r"out_channels must be divisible by groups.*out_channels=6, groups=4"),
    (lambda: LC2(4, 6, 3, groups=0, input_size=8), ValueError, r"groups must be a positive int, got groups=0"),
    (lambda: LC2(0, 6, 3, input_size=8), ValueError, r"in_channels must be positive, got in_channels=0"),
    (lambda: LC2(3, -1, 3, input_size=8), ValueError, r"out_channels must be positive, got out_channels=-1"),
    (lambda: LC2(3, 4, 0, input_size=8), ValueError, r"kernel_size must be positive, got kernel_size=\(0, 0\)"),
    (lambda: LC2(3, 4, 3, stride=(1, 0), input_size=8), ValueError, r"stride must be positive, got stride=\(1, 0\)"),
    (lambda: LC2(3, 4, 3, dilation=-2, input_size=8), ValueError, r"dilation must be positive, got dilation=\(-2, -2\)"),
    (lambda: LC2(3, 4, 3, input_size=(8, 0)), ValueError, r"input_size must be positive, got input_size=\(8, 0\)"),
    (lambda: LC2(3, 4, 3, padding=-1, input_size=8), ValueError, r"padding must be non-negative, got padding=\(-1, -1\)"),
    (lambda: LC2(3, 4, 3, stride=2, padding="same", input_size=8), ValueError, r"padding='same' requires stride 1, got stride=\(2, 2\)"),
    (lambda: LC2(3, 4, 3, padding="full", input_size=8), ValueError, r"padding must be .*'valid' or 'same', got 'full'"),
    (lambda: LC2(3, 4, 3, padding_mode="mirror", input_size=8), ValueError, r"padding_mode must be one of .* got padding_mode='mirror'"),
    (lambda: LC2(3, 4, 9, padding=0, input_size=(8, 12)), ValueError, r"kernel larger than the padded input: kernel_size=\(9, 9\).*input_size=\(8, 12\)"),
    (lambda: LC2(3, 4, 3, dilation=5, padding=1, input_size=8), ValueError, r"kernel larger than the padded input.*spans 11.*gives 10"),
    (lambda: LC2(3, 4, (3, 3, 3), input_size=8), ValueError, r"kernel_size must be an int or a tuple of 2 ints, got \(3, 3, 3\)"),
    (lambda: LC2(3, 4, 3, input_size=None), ValueError, r"input_size is required.*LazyLocallyConnected2d"),
    (lambda: LC2(3.0, 4, 3, input_size=8), TypeError, r"in_channels must be an int, got 3.0"),
    (lambda: LC2(3, 4, "3", input_size=8), TypeError, r"kernel_size must be an int or a tuple of 2 ints, got '3'"),
    (lambda: LC2(3, 4, 3, input_size=8, backend="cudnn"), ValueError, r"backend must be 'auto' or one of .*got backend='cudnn'"),
])
def test_constructor_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.fixture
def layer():
    return LC2(3, 4, 3, padding=1, input_size=(6, 7))


@pytest.mark.parametrize("x,error,match", [
    (torch.randn(3, 6), ValueError, r"expected a 4-d \(batched\) or 3-d \(unbatched\) input, got input of shape \(3, 6\)"),
    (torch.randn(1, 2, 3, 6, 7), ValueError, r"expected a 4-d .* got input of shape \(1, 2, 3, 6, 7\)"),
    (torch.randn(2, 5, 6, 7), ValueError, r"expected 3 input channels, got 5 in input of shape \(2, 5, 6, 7\)"),
    (torch.randn(2, 3, 6, 8), ValueError, r"built for input_size=\(6, 7\), got input of spatial size \(6, 8\)"),
    (torch.randn(3, 7, 6), ValueError, r"built for input_size=\(6, 7\), got input of spatial size \(7, 6\)"),
    (torch.ones(2, 3, 6, 7, dtype=torch.int64), TypeError, r"input must be a floating point tensor, got dtype=torch.int64"),
    (torch.randn(2, 3, 6, 7, dtype=torch.float64), TypeError, r"weight dtype torch.float32 differs from input dtype torch.float64"),
    ([[1.0]], TypeError, r"input must be a Tensor, got list"),
])
def test_forward_errors(layer, x, error, match):
    with pytest.raises(error, match=match):
        layer(x)


@pytest.mark.parametrize("call,error,match", [
    # the output grid comes from the weight; the input must produce it
    (lambda: UF.locally_connected2d(_w(2, 3, 8, 8), _w(5, 5, 4, 3, 3, 3)), ValueError,
     r"weight was made for output size \(5, 5\), which needs input spatial size \(7, 7\), got input spatial size \(8, 8\) \(output size \(6, 6\)\)"),
    (lambda: UF.locally_connected2d(_w(2, 3, 7, 7), _w(5, 5, 4, 3, 3, 3), stride=2), ValueError,
     r"weight was made for output size \(5, 5\), which needs input spatial size \(11, 11\), got input spatial size \(7, 7\)"),
    (lambda: UF.locally_connected2d(_w(2, 3, 7, 7), _w(5, 5, 4, 3, 3)), ValueError,
     r"weight must have 6 dimensions .* got weight of shape \(5, 5, 4, 3, 3\)"),
    (lambda: UF.locally_connected1d(_w(2, 3, 7), _w(5, 4, 2, 3)), ValueError,
     r"expected input with 2 channels \(weight has in_channels // groups = 2, groups=1\), got 3 channels"),
    (lambda: UF.locally_connected1d(_w(2, 4, 7), _w(5, 3, 2, 3), groups=2), ValueError,
     r"out_channels must be divisible by groups, got out_channels=3, groups=2"),
    (lambda: UF.locally_connected1d(_w(2, 4, 7), _w(5, 4, 4, 3), _w(4, 6)), ValueError,
     r"bias must have shape \(4, 5\) \(per position\) or \(4,\) \(shared\), got bias of shape \(4, 6\)"),
    (lambda: UF.locally_connected1d(_w(2, 4, 7), _w(5, 4, 4, 3), _w(5)), ValueError,
     r"bias must have shape .* got bias of shape \(5,\)"),
    (lambda: UF.locally_connected1d(_w(2, 4, 7), _w(5, 4, 4, 0)), ValueError, r"zero-sized dimension"),
    (lambda: UF.locally_connected1d(_w(2, 4, 7), [1.0]), TypeError, r"weight must be a Tensor, got list"),
    (lambda: UF.locally_connected1d(_w(2, 4, 7), _w(5, 4, 4, 3), 1.0), TypeError, r"bias must be a Tensor or None, got float"),
    (lambda: UF.locally_connected1d(_w(2, 4, 7), _w(5, 4, 4, 3), _w(4).double()), TypeError, r"bias dtype torch.float64 differs"),
    (lambda: UF.locally_connected1d(_w(2, 4, 7), _w(5, 4, 4, 3).to("meta")), ValueError, r"weight is on meta but input is on cpu"),
    (lambda: UF.locally_connected1d(_w(2, 4, 3), _w(7, 4, 4, 3), padding=3, padding_mode="reflect"), ValueError,
     r"padding_mode='reflect' needs padding < input size, got padding=\(\(3, 3\),\) for input spatial size \(3,\)"),
    (lambda: UF.locally_connected1d(_w(2, 4, 7), _w(5, 4, 4, 3), padding_mode="wrap"), ValueError, r"padding_mode must be one of"),
    (lambda: UF.locally_connected1d(_w(2, 4, 7), _w(5, 4, 4, 3), stride=0), ValueError, r"stride must be positive, got stride=\(0,\)"),
    (lambda: UF.locally_connected1d(_w(2, 4, 7), _w(5, 4, 4, 3), groups=1.5), ValueError, r"groups must be a positive int, got groups=1.5"),
    (lambda: UF.locally_connected1d(_w(2, 4, 7), _w(5, 4, 4, 3), backend="cuda-convnet"), ValueError, r"backend must be 'auto' or one of \('torch', .*'composite'.*\), got backend='cuda-convnet'"),
])
def test_functional_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_geometry_error_names_the_layer_and_the_padding_as_written():
    # a stack built for too small an input: the message says which layer, with the user's padding
    with pytest.raises(ValueError, match=r"^LocallyConnected2d\(81, 256, kernel_size=\(3, 3\), stride=\(1, 1\), "
                                         r"padding='valid'\) at input_size=\(2, 2\): kernel larger than the padded"):
        unshared.LocallyConnected2d(81, 256, 3, padding="valid", input_size=2)
    lazy = unshared.LazyLocallyConnected1d(4, 5, padding=(1,))
    with pytest.raises(ValueError, match=r"^LazyLocallyConnected1d\(3, 4, .*padding=\(1,\)\) at input_size=\(2,\)"):
        lazy(torch.randn(1, 3, 2))
