import os
import sys
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py, shared with benchmarks/


def switched_on(name: str) -> bool:
    """A documented on/off variable (``UNSHARED_FULL_SWEEP``, ...): unset, empty or ``0`` mean off."""
    return os.environ.get(name, "").strip() not in ("", "0")


# Without a GPU the Triton kernels run under Triton's interpreter (on CPU tensors). It is read
# when the kernels are defined, so it must be set before unshared's Triton backend first computes.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A fresh inductor cache: a cached graph of an earlier version of the ops (another schema) would be
# reused otherwise, since the cache key does not cover the custom ops' Python implementations.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="unshared-inductor-"))

# Derandomized: the same configurations every run, so a failure reproduces. UNSHARED_FULL_SWEEP=1
# runs the long sweep: every property test multiplies its examples by EXAMPLES_SCALE
# (tests/test_suite.py checks that each one does).
settings.register_profile(
    "unshared", derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("unshared")
EXAMPLES_SCALE = 5 if switched_on("UNSHARED_FULL_SWEEP") else 1

from unshared import _plans  # noqa: E402
from unshared.backends import cpu as _cpu, release_pooled_buffers, selection as _selection  # noqa: E402  (after TRITON_INTERPRET is set)

#: What ``backend="auto"`` picks for float32/float64 CPU tensors: the compiled kernels when built.
CPU_AUTO = "cpu" if _cpu.available_isas() else "torch"

_MATMUL, _CUDNN = torch.backends.cuda.matmul, torch.backends.cudnn


def _global_state() -> dict:
    """What a test may change for the whole process: PyTorch's global switches, unshared's
    measuring switch and the environment."""
    state = {"threads": torch.get_num_threads(), "dtype": torch.get_default_dtype(),
             "grad": torch.is_grad_enabled(), "deterministic": torch.are_deterministic_algorithms_enabled(),
             "matmul precision": torch.get_float32_matmul_precision(), "measuring": _selection.measuring(),
             "environment": dict(os.environ), "cudnn tf32": _CUDNN.allow_tf32}
    try:  # raises after a test mixed the legacy and the new TF32 API: fp32_precision restores it
        state["matmul tf32"] = _MATMUL.allow_tf32
    except RuntimeError:
        state["matmul tf32"] = None
    for name, backend in (("matmul", _MATMUL), ("cudnn conv", _CUDNN.conv), ("cudnn rnn", _CUDNN.rnn)):
        state[f"{name} fp32"] = backend.fp32_precision
    return state


def _restore(state: dict) -> None:
    torch.set_num_threads(state["threads"])
    torch.set_default_dtype(state["dtype"])
    torch.set_grad_enabled(state["grad"])
    torch.use_deterministic_algorithms(state["deterministic"])
    _selection.measuring(state["measuring"])
    for name in set(os.environ) - set(state["environment"]):
        del os.environ[name]
    os.environ.update(state["environment"])
    # the legacy TF32 flags first, then the precisions (setting one API updates the other)
    if state["matmul tf32"] is not None:
        _MATMUL.allow_tf32 = state["matmul tf32"]
    _CUDNN.allow_tf32 = state["cudnn tf32"]
    torch.set_float32_matmul_precision(state["matmul precision"])
    for name, backend in (("matmul", _MATMUL), ("cudnn conv", _CUDNN.conv), ("cudnn rnn", _CUDNN.rnn)):
        backend.fp32_precision = state[f"{name} fp32"]


@pytest.fixture(autouse=True)
def isolated_global_state():
    """Every test starts from the same random state and leaves the process's global state as it
    found it, so that no result depends on which tests ran before (any order passes); the
    functional forms' plans are cleared too (a plan keeps the backend an earlier test's state chose)."""
    saved, rng = _global_state(), torch.random.get_rng_state()
    torch.manual_seed(0)
    _plans.clear()
    yield
    release_pooled_buffers()
    torch.random.set_rng_state(rng)
    _restore(saved)


@pytest.fixture
def measuring_on():
    """``auto`` measures on CUDA, whatever ``UNSHARED_MEASURE_BACKENDS`` says (restored after)."""
    _selection.measuring(True)
    yield
