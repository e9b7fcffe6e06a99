"""Every way of computing a locally connected layer, and the choice between them.

=============  =====================================================================  ============
backend        what computes                                                          devices
=============  =====================================================================  ============
``torch``      block implicit GEMM on strided views, batched matmuls (:mod:`.pytorch`)  any
``cpu``        compiled C kernels (``csrc/``, built at install; :mod:`.cpu`)            CPU
``triton``     fused Triton kernels (:mod:`.triton`)                                   CUDA
``unfold``     the one-shot plan: one gather and one batched matmul per operation     any
               (:mod:`.unfold`; temporaries bounded by ``settings().one_shot_bytes``)
``composite``  standard differentiable operators, for exporters (:mod:`.composite`)   any
``conv``       PyTorch's convolutions, per shared filter bank or low-rank basis       any
               (:mod:`.conv`)
=============  =====================================================================  ============

Each backend module has ``can_run(x, w, geometry)``, which returns ``None`` or the reason it
cannot compute a call. :func:`choose_backend` picks one: an explicit ``backend=`` wins (and raises
``ValueError`` with its reason when it cannot run); ``"auto"`` follows the rules in its docstring.
:mod:`.ops` turns the backends' three operations into one differentiable custom operator;
:mod:`.settings` holds the tunable numbers (:func:`settings` changes them for a block of code);
:mod:`.selection` measures the CUDA candidates for ``"auto"``; :mod:`.flops` gives FLOP counters
the operators' counts; :mod:`.buffers` maps large CPU buffers and pools large weight gradients
(:func:`release_pooled_buffers` returns their memory).
"""
from __future__ import annotations

import torch

from . import flops
from .buffers import release_pooled_buffers
from .registry import BACKENDS, check_backend_name
from .selection import choices, clear_choices, measuring
from .settings import Settings, current_settings, settings

flops.register_when_imported()  # FLOP formulas of the operators, for FlopCounterMode

__all__ = ["BACKENDS", "choose_backend", "check_backend_name", "settings", "Settings", "current_settings",
           "measuring", "clear_choices", "choices", "release_pooled_buffers"]


def choose_backend(x: torch.Tensor, w: torch.Tensor, geometry, backend: str = "auto") -> str:
    """The name of the backend that computes this call (``"auto"`` on CUDA: chosen per call by
    measurement inside the operator, see :mod:`.selection`).

    An explicit ``backend`` wins, and raises ``ValueError`` with its reason when it cannot run.
    ``"auto"``, in order: shared filter banks with at least ``min_positions_per_conv`` positions
    per bank on average run as convolutions (``conv``); while ``torch.onnx.export`` or
    ``torch.jit.trace`` traces, the composite backend (neither records custom operators: the
    traced graph is then standard operators, with the batch size left free); while ``torch.export``
    exports, ``"auto"`` (the program chooses when it runs, on its own dtype and device); CUDA tensors: the fastest of Triton, the
    PyTorch backend and the one-shot plan (``unfold``, when its temporaries fit), measured once per shape (Triton
    alone when measuring is off, the PyTorch backend when Triton cannot run); CPU tensors: the compiled kernels (``cpu``) when they can run
    (built, float32/float64); otherwise the PyTorch backend.

    Example (the functional forms and layers call it with their ``backend=``)::

        >>> import torch
        >>> from unshared import functional as UF
        >>> UF.locally_connected1d(torch.randn(2, 3, 8), torch.randn(6, 4, 3, 3), backend="conv")
        Traceback (most recent call last):
        ...
        ValueError: backend='conv' cannot compute this call: every position has its own ...
    """
    check_backend_name(backend)
    if backend != "auto":
        reason = BACKENDS[backend].can_run(x, w, geometry)
        if reason is None and torch.jit.is_tracing() and not getattr(BACKENDS[backend], "STANDARD_OPERATORS", False):
            reason = ("torch.jit.trace records standard operators only; use backend='auto' or 'composite' "
                      "(or torch.export / torch.compile, which keep the custom operator)")
        if reason is not None:
            raise ValueError(f"backend={backend!r} cannot compute this call: {reason}")
        return backend
    if (geometry.banks is not None and BACKENDS["conv"].can_run(x, w, geometry) is None
            and geometry.positions >= current_settings().min_positions_per_conv * geometry.bank_count):
        return "conv"
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return "composite"
    if torch.compiler.is_exporting():  # a portable program: chosen when it runs, for its dtype and device
        return "auto"
    if x.device.type == "cuda" and BACKENDS["triton"].can_run(x, w, geometry) is None:
        return "auto" if measuring() else "triton"
    if x.device.type == "cpu" and BACKENDS["cpu"].can_run(x, w, geometry) is None:
        return "cpu"
    return "torch"
