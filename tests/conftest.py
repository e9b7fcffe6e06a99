import os
import sys
import tempfile

import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py, shared with benchmarks/

# Without a GPU the Triton kernels run under Triton's interpreter (on CPU tensors). It is read
# when the kernels are defined, so it must be set before unshared's Triton backend first computes.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A fresh inductor cache: a cached graph of an earlier version of the ops (another schema) would be
# reused otherwise, since the cache key does not cover the custom ops' Python implementations.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="unshared-inductor-"))

# Derandomized: the same configurations every run, so a failure reproduces. UNSHARED_FULL_SWEEP=1
# runs the long sweep (5x the examples of every property test).
_scale = 5 if os.environ.get("UNSHARED_FULL_SWEEP") else 1
settings.register_profile(
    "unshared", derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("unshared")
EXAMPLES_SCALE = _scale

from unshared.backends import cpu as _cpu  # noqa: E402  (after TRITON_INTERPRET is set)

#: What ``backend="auto"`` picks for float32/float64 CPU tensors: the compiled kernels when built.
CPU_AUTO = "cpu" if _cpu.available_isas() else "torch"
