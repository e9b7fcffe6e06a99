"""unshared.interop as a whole: every stored fixture (Keras, Flax, lax) converts and reproduces
its framework's output, without TensorFlow or JAX.

- Stored fixtures (tests/fixtures/*.npz, made by tests/fixtures/make_interop_fixtures.py): the
  stored config and weights converted without TensorFlow or JAX must reproduce the stored output.
- The framework-specific cases, their errors and the live comparisons (when tf_keras / flax are
  importable) are in tests/test_interop_keras.py and tests/test_interop_flax.py.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import unshared
from interop_cases import FIXTURES, NAMES, convert_fixture, local_of, run
from unshared import interop


def test_public_names():
    assert interop.__all__ == ["from_keras", "from_flax", "from_lax", "gennet_connectivity"]
    assert interop.gennet_connectivity.__module__ == "unshared.interop.gennet"
    assert unshared.interop.from_keras.__module__ == "unshared.interop.keras"
    assert {interop.from_flax.__module__, interop.from_lax.__module__} == {"unshared.interop.flax"}


def test_fixtures_present():
    kinds = {n.split("_")[0] for n in NAMES}
    assert kinds == {"keras", "flax", "lax"}, NAMES
    assert sum(os.path.getsize(f) for f in FIXTURES) < 100_000


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_fixture(name, dtype):
    module, arrays, last = convert_fixture(name, dtype)
    layer = local_of(module)
    assert isinstance(layer, (unshared.LocallyConnected1d, unshared.LocallyConnected2d))
    assert layer.weight.dtype == dtype
    y = run(module, arrays["x"], last, dtype)
    expected = torch.from_numpy(arrays["y"]).to(dtype)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_converted_layer_trains():
    module, arrays, last = convert_fixture("keras_lc2d_impl3_last")
    y = run(module, arrays["x"], last, torch.float32)
    y.square().sum().backward()
    assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_no_framework_imported():
    code = ("import sys, unshared.interop as i; i.from_lax; "
            "bad = [m for m in ('tensorflow', 'tf_keras', 'keras', 'jax', 'flax') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

