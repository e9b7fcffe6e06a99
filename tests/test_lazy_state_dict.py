"""A lazy layer loads a state dict before its first call, as ``nn.LazyConv2d`` does: the weight
fixes ``in_channels`` and the output grid (a transposed layer's: every size); the first input
gives a plain layer's ``input_size``, and must produce the loaded grid."""
import pytest
import torch
from torch.nn.parameter import UninitializedParameter

import unshared
import unshared._utils

# lazy class, its eager class, constructor arguments (no in_channels), in_channels, input_size
CASES = {
    "1d": (unshared.LazyLocallyConnected1d, unshared.LocallyConnected1d, dict(out_channels=4, kernel_size=3,
                                                                             padding=1), 3, (9,)),
    "2d": (unshared.LazyLocallyConnected2d, unshared.LocallyConnected2d, dict(out_channels=6, kernel_size=(3, 2),
                                                                             stride=2, groups=2), 4, (9, 8)),
    "3d": (unshared.LazyLocallyConnected3d, unshared.LocallyConnected3d, dict(out_channels=2, kernel_size=2,
                                                                             shared_bias=True), 3, (3, 4, 3)),
    "transposed-1d": (unshared.LazyLocallyConnectedTranspose1d, unshared.LocallyConnectedTranspose1d,
                      dict(out_channels=2, kernel_size=3, stride=2), 3, (6,)),
    "transposed-2d": (unshared.LazyLocallyConnectedTranspose2d, unshared.LocallyConnectedTranspose2d,
                      dict(out_channels=4, kernel_size=3, stride=2, padding=1, output_padding=1, groups=2), 2, (4, 5)),
    "transposed-3d": (unshared.LazyLocallyConnectedTranspose3d, unshared.LocallyConnectedTranspose3d,
                      dict(out_channels=2, kernel_size=2, bias=False), 3, (2, 3, 2)),
}


def _pair(name):
    lazy_cls, cls, kwargs, in_channels, size = CASES[name]
    torch.manual_seed(0)
    source = cls(in_channels, **kwargs, input_size=size)
    return lazy_cls(**kwargs), source, torch.randn(2, in_channels, *size)


@pytest.mark.parametrize("name", CASES)
def test_lazy_layer_loads_a_state_dict_before_its_first_call(name):
    lazy, source, x = _pair(name)
    lazy.load_state_dict(source.state_dict())
    assert not lazy.has_uninitialized_params()
    assert lazy.in_channels == source.in_channels  # known before the first call
    assert lazy.output_size == source.output_size
    if "transposed" in name:  # its weight's grid is the input grid
        assert lazy.input_size == source.input_size
    y = lazy(x)
    assert type(lazy) is type(source) and repr(lazy) == repr(source)
    torch.testing.assert_close(y, source(x))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(lazy.state_dict()[key], value)
    assert lazy.weight.stride() == source.weight.stride()  # the default (kernel-major) layout, as the eager layer's


@pytest.mark.parametrize("name", CASES)
def test_a_loaded_lazy_layer_takes_the_default_layout_of_a_contiguous_checkpoint(name):
    lazy, source, x = _pair(name)
    state = {key: value.contiguous() for key, value in source.state_dict().items()}
    lazy.load_state_dict(state)
    assert unshared._utils.is_kernel_major(lazy.weight) and lazy.weight.stride() == source.weight.stride()
    torch.testing.assert_close(lazy(x), source(x))


def test_the_first_input_gives_the_input_size_and_must_produce_the_loaded_grid():
    # stride 2: input sizes 9 and 10 both give output size 4, so the state dict cannot tell them apart
    lazy = unshared.LazyLocallyConnected1d(2, 3, stride=2)
    source = unshared.LocallyConnected1d(3, 2, 3, stride=2, input_size=9)
    lazy.load_state_dict(source.state_dict())
    assert lazy.input_size is None and lazy.output_size == (4,)
    with pytest.raises(ValueError, match=r"made for output size \(4,\), but input of spatial size \(7,\) gives "
                                         r"output size \(3,\)"):
        lazy(torch.randn(2, 3, 7))
    assert lazy.input_size is None and lazy.output_size == (4,)  # unchanged: a right input still works
    x = torch.randn(2, 3, 10)
    torch.testing.assert_close(lazy(x), source(x[..., :9]))
    assert lazy.input_size == (10,)


def test_the_first_input_must_have_the_loaded_channels():
    lazy = unshared.LazyLocallyConnected2d(5, 3)
    lazy.load_state_dict(unshared.LocallyConnected2d(4, 5, 3, input_size=8).state_dict())
    with pytest.raises(ValueError, match="expected 4 input channels, got 3"):
        lazy(torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("kwargs,match", [
    (dict(out_channels=5, kernel_size=2), r"\(6, 6, 5, 4, 3, 3\), \(5, 6, 6\)\), but this layer's arguments .* need "
                                          r"\(\(6, 6, 5, 4, 2, 2\), \(5, 6, 6\)\)"),
    (dict(out_channels=4, kernel_size=3), r"need \(\(6, 6, 4, 4, 3, 3\), \(4, 6, 6\)\)"),
    (dict(out_channels=5, kernel_size=3, shared_bias=True), r"need \(\(6, 6, 5, 4, 3, 3\), \(5,\)\)"),
])
def test_a_state_dict_for_other_arguments_is_refused_and_changes_nothing(kwargs, match):
    lazy = unshared.LazyLocallyConnected2d(**kwargs)
    with pytest.raises(ValueError, match=match):
        lazy.load_state_dict(unshared.LocallyConnected2d(4, 5, 3, input_size=8).state_dict())
    assert isinstance(lazy.weight, UninitializedParameter) and lazy.in_channels == 0 and lazy.output_size is None
    lazy(torch.randn(1, 2, 7, 7))  # still lazy: the first input initialises it
    assert lazy.in_channels == 2


def test_a_state_dict_of_another_dimensionality_is_refused():
    lazy = unshared.LazyLocallyConnectedTranspose2d(3, 2)
    with pytest.raises(ValueError, match=r"weight has shape \(5, 2, 3, 2\), not a 2d layer's 6 positive dimensions"):
        lazy.load_state_dict(unshared.LocallyConnectedTranspose1d(2, 3, 2, input_size=5).state_dict())


def test_an_uninitialised_state_dict_leaves_the_layer_lazy():
    lazy = unshared.LazyLocallyConnected2d(5, 3)
    lazy.load_state_dict(unshared.LazyLocallyConnected2d(5, 3).state_dict())
    assert lazy.has_uninitialized_params()
    assert lazy(torch.randn(1, 2, 6, 6)).shape == (1, 5, 4, 4)
