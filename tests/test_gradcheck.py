"""gradcheck and gradgradcheck (float64) on every family of configurations."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import unshared.functional as UF
from configs import Config
from conftest import CPU_AUTO

FN = {1: UF.locally_connected1d, 2: UF.locally_connected2d, 3: UF.locally_connected3d}


def _family(nd):
    k3, s2, d2 = (3,) * nd, (2,) * nd, (2,) * nd
    one = (1,) * nd
    small = {1: (7,), 2: (5, 6), 3: (3, 4, 4)}[nd]
    base = dict(nd=nd, in_channels=2, out_channels=2, kernel_size=(2,) * nd, stride=one, padding=0,
                dilation=one, groups=1, padding_mode="zeros", input_size=small, batch=2,
                bias="position", layout="contiguous")
    yield "plain", base
    yield "stride_padding", {**base, "kernel_size": k3, "stride": s2, "padding": 1}
    yield "dilation_same", {**base, "dilation": d2, "padding": "same", "kernel_size": (2,) * nd}
    yield "groups", {**base, "in_channels": 4, "out_channels": 2, "groups": 2, "bias": "shared"}
    for mode in ("reflect", "replicate", "circular"):
        yield mode, {**base, "padding": 1, "padding_mode": mode, "bias": None}
    yield "unbatched", {**base, "batch": None}
    yield "noncontiguous", {**base, "layout": "noncontiguous"}
    if nd > 1:
        yield "channels_last", {**base, "layout": "channels_last"}


CASES = [pytest.param(Config(**kw), id=f"{nd}d-{name}") for nd in (1, 2, 3) for name, kw in _family(nd)]


# the Triton backend runs the same checks in test_triton.py (slow under its interpreter)
BACKENDS = ["torch", "composite", pytest.param("cpu", marks=pytest.mark.skipif(
    CPU_AUTO != "cpu", reason="the compiled CPU kernels are not built"))]


@pytest.mark.parametrize("check", [gradcheck, gradgradcheck], ids=["gradcheck", "gradgradcheck"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CASES)
def test_gradcheck_and_gradgradcheck(cfg, backend, check):
    x, w, b = cfg.tensors(requires_grad=True)
    inputs = (x, w) if b is None else (x, w, b)
    fn = lambda *t: FN[cfg.nd](*t, **cfg.kwargs(), backend=backend)  # noqa: E731
    assert check(fn, inputs, fast_mode=True)
