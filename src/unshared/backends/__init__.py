"""Ways of computing a locally connected layer, and the choice between them.

Each backend module provides ``can_run(x, w, geometry) -> str | None`` (``None`` when it can run,
else the reason) and the three operations ``forward``, ``input_grad`` and ``weight_grad``
(zero padding only; see :mod:`unshared.backends.torch_backend`). :mod:`unshared.backends.ops`
turns them into one differentiable operator. Importing a backend module imports no optional
dependency: the Triton backend imports Triton only when it computes.
"""
from __future__ import annotations

from . import torch_backend, triton_backend

BACKENDS = {"torch": torch_backend, "triton": triton_backend}


def check_backend_name(backend, name: str = "backend") -> str:
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"{name} must be 'auto' or one of {tuple(BACKENDS)}, got {name}={backend!r}")
    return backend


def choose_backend(x, w, geometry, backend: str = "auto") -> str:
    """The name of the backend that computes this call.

    An explicit ``backend`` wins, and raises ``ValueError`` with its reason when it cannot run.
    ``"auto"`` takes Triton for CUDA tensors when it can run, and the PyTorch backend otherwise.
    """
    check_backend_name(backend)
    if backend != "auto":
        reason = BACKENDS[backend].can_run(x, w, geometry)
        if reason is not None:
            raise ValueError(f"backend={backend!r} cannot compute this call: {reason}")
        return backend
    if x.device.type == "cuda" and triton_backend.can_run(x, w, geometry) is None:
        return "triton"
    return "torch"
