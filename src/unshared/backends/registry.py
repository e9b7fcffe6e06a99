"""The backends by name. Each module provides ``can_run(x, w, geometry) -> str | None`` (``None``
when it can compute the call, else the reason) and ``forward(x, w, geometry)``; backends run as
the custom operator (:mod:`.ops`) also provide ``input_grad`` and ``weight_grad``; those made of
standard differentiable operators set ``STANDARD_OPERATORS = True``, the others ``False`` (a
module attribute that is missing costs an exception on every lookup)."""
from __future__ import annotations

from . import composite, conv, cpu, pytorch, triton, unfold

BACKENDS = {"torch": pytorch, "cpu": cpu, "triton": triton, "unfold": unfold, "composite": composite, "conv": conv}

__all__ = ["BACKENDS", "check_backend_name"]


def check_backend_name(backend, name: str = "backend") -> str:
    """``backend`` when it is ``"auto"`` or a name in :data:`BACKENDS`; else ``ValueError`` naming it.

    Example::

        >>> from unshared.backends import check_backend_name
        >>> check_backend_name("cpu")
        'cpu'
        >>> check_backend_name("cuda")
        Traceback (most recent call last):
        ...
        ValueError: backend must be 'auto' or one of ('torch', 'cpu', 'triton', 'unfold', 'composite', 'conv'), got backend='cuda'
    """
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"{name} must be 'auto' or one of {tuple(BACKENDS)}, got {name}={backend!r}")
    return backend
