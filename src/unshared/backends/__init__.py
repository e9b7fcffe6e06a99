"""Ways of computing a locally connected layer, and the choice between them.

Each backend module provides ``can_run(x, w, geometry) -> str | None`` (``None`` when it can run,
else the reason) and ``forward(x, w, geometry, banks)`` (zero padding only). The ``torch`` and
``triton`` backends also provide ``input_grad`` and ``weight_grad``, which
:mod:`unshared.backends.ops` turns, with ``forward``, into one differentiable custom operator;
``composite`` is made of standard differentiable operators and needs none (for exporters).
Importing a backend module imports no optional dependency: the Triton backend imports Triton
only when it computes.
"""
from __future__ import annotations

import torch

from . import composite, torch_backend, triton_backend

BACKENDS = {"torch": torch_backend, "triton": triton_backend, "composite": composite}


def check_backend_name(backend, name: str = "backend") -> str:
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"{name} must be 'auto' or one of {tuple(BACKENDS)}, got {name}={backend!r}")
    return backend


def choose_backend(x, w, geometry, backend: str = "auto") -> str:
    """The name of the backend that computes this call.

    An explicit ``backend`` wins, and raises ``ValueError`` with its reason when it cannot run.
    ``"auto"`` takes Triton for CUDA tensors when it can run, and the PyTorch backend otherwise;
    while ``torch.onnx.export`` traces, it takes the composite backend (ONNX has no custom ops).
    """
    check_backend_name(backend)
    if backend != "auto":
        reason = BACKENDS[backend].can_run(x, w, geometry)
        if reason is not None:
            raise ValueError(f"backend={backend!r} cannot compute this call: {reason}")
        return backend
    if torch.onnx.is_in_onnx_export():
        return "composite"
    if x.device.type == "cuda" and triton_backend.can_run(x, w, geometry) is None:
        return "triton"
    return "torch"
