"""The one-shot plan (``backend="unfold"``: one gather and one batched matmul per operation) against
the float64 reference, its temporaries' budget, and its place among ``auto``'s CUDA candidates."""
import pytest
import torch
from hypothesis import given, settings
from torch.autograd import gradcheck, gradgradcheck

import unshared
from unshared import _utils as U
from unshared.backends import BACKENDS, selection
from unshared.backends import settings as backend_settings
from unshared.backends.unfold import transient_bytes
from conftest import EXAMPLES_SCALE
from configs import Config, configs
from test_backends import StandIn, fake_timer
from test_functional import FN, check_against_reference


@settings(max_examples=200 * EXAMPLES_SCALE, deadline=None)
@given(cfg=configs())
def test_float64_and_float32_match_the_reference(cfg):
    check_against_reference(cfg, torch.float64, 0, backend="unfold")
    check_against_reference(cfg, torch.float32, 1, backend="unfold")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@settings(max_examples=20 * EXAMPLES_SCALE, deadline=None)
@given(cfg=configs(max_batch=2))
def test_half_precision_matches_the_reference(dtype, cfg):
    check_against_reference(cfg, dtype, 2, backend="unfold")


@pytest.mark.parametrize("kernel_major", [True, False])
@pytest.mark.parametrize("cfg", [
    Config(nd=1, in_channels=2, out_channels=4, kernel_size=(3,), stride=(2,), padding=2, dilation=(2,), groups=2,
           padding_mode="zeros", input_size=(9,), batch=2, bias="position", layout="contiguous"),
    Config(nd=2, in_channels=3, out_channels=2, kernel_size=(2, 3), stride=(1, 2), padding=1, dilation=(1, 1),
           groups=1, padding_mode="reflect", input_size=(5, 6), batch=1, bias="shared", layout="channels_last"),
    Config(nd=3, in_channels=2, out_channels=2, kernel_size=(2, 2, 2), stride=(1, 1, 1), padding=0,
           dilation=(1, 1, 1), groups=2, padding_mode="zeros", input_size=(3, 3, 4), batch=None, bias=None,
           layout="noncontiguous"),
], ids=["1d-groups-stride-dilation", "2d-reflect-channels-last", "3d-unbatched"])
def test_gradcheck_and_gradgradcheck(cfg, kernel_major):
    cfg.kernel_major = kernel_major
    x, w, b = cfg.tensors(requires_grad=True)
    inputs = (x, w) if b is None else (x, w, b)
    fn = lambda *t: FN[cfg.nd](*t, **cfg.kwargs(), backend="unfold")  # noqa: E731
    assert gradcheck(fn, inputs, fast_mode=True)
    assert gradgradcheck(fn, inputs, fast_mode=True)


def test_over_the_budget_it_refuses_and_names_the_bytes():
    x, w = torch.randn(4, 3, 10), torch.randn(8, 5, 3, 3)
    need = transient_bytes(4, _geometry(), torch.float32)
    with backend_settings(one_shot_bytes=need):
        unshared.functional.locally_connected1d(x, w, backend="unfold")  # exactly the budget: runs
    with backend_settings(one_shot_bytes=need - 1):
        with pytest.raises(ValueError, match=rf"backend='unfold' cannot compute this call: the one-shot plan "
                                             rf"needs {need} bytes .* at batch 4, more than "
                                             rf"settings\(one_shot_bytes={need - 1}\)"):
            unshared.functional.locally_connected1d(x, w, backend="unfold")
    with backend_settings(one_shot_bytes=0):
        assert "one_shot_bytes=0" in BACKENDS["unfold"].can_run(x, w, _geometry())


def _geometry():
    """The geometry of a (4, 3, 10) input and an (8, 5, 3, 3) weight."""
    return U.Geometry((10,), (8,), (3,), (1,), ((0, 0),), (1,), 1, 3, 5)


def test_transient_bytes_counts_patches_padded_input_output_and_filters():
    g = _geometry()
    # patches 4*8*3*3, padded input 4*3*10, output 4*8*5, filters 8*5*3*3; float32 and float16 (computed in float32)
    elements = 4 * 8 * 3 * 3 + 4 * 3 * 10 + 4 * 8 * 5 + 8 * 5 * 3 * 3
    assert transient_bytes(4, g, torch.float32) == transient_bytes(4, g, torch.float16) == 4 * elements
    assert transient_bytes(4, g, torch.float64) == 8 * elements


class Fitting(StandIn):
    """A stand-in backend that can run only the inputs that ``fits``."""

    def __init__(self, name, seconds, fits):
        super().__init__(name, seconds)
        self.fits = fits

    def can_run(self, x, w, g):
        return None if self.fits(x) else "over the budget"


def test_auto_measures_the_one_shot_plan_and_keeps_the_fastest_that_can_run(measuring_on):
    assert selection.CANDIDATES == ("triton", "torch", "unfold")
    selection.clear_choices()
    backends = {"triton": StandIn("triton", 2.0), "torch": StandIn("torch", 3.0),
                "unfold": Fitting("unfold", 1.0, fits=lambda x: x.shape[0] <= 5)}
    w, g = torch.randn(8, 5, 3, 3), _geometry()
    try:
        assert selection.resolve(torch.randn(5, 3, 10), w, g, "forward", backends, fake_timer) == "unfold"
        assert list(selection.choices().values()) == ["unfold"]
        calls = [b.calls for b in backends.values()]
        # batch 6 is in the same bucket (8) but over the plan's budget: the next fastest measured, no new measurement
        assert selection.resolve(torch.randn(6, 3, 10), w, g, "forward", backends, fake_timer) == "triton"
        assert [b.calls for b in backends.values()] == calls and len(selection.choices()) == 1
    finally:
        selection.clear_choices()
