"""Ways of computing a locally connected layer, and the choice between them.

Each backend module provides ``can_run(x, w, geometry) -> str | None`` (``None`` when it can run,
else the reason) and ``locally_connected(x, w, geometry)`` (differentiable, zero padding only).
Backends are imported on first use, so an optional dependency is never imported by
``import unshared``.
"""
from __future__ import annotations

import importlib

BACKENDS = {"torch": "unshared.backends.torch_backend"}


def get_backend(name: str):
    if name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {tuple(BACKENDS)}, got backend={name!r}")
    return importlib.import_module(BACKENDS[name])


def choose_backend(x, w, geometry, backend: str = "auto"):
    """The backend module that computes this call: the explicit ``backend`` if it can run,
    otherwise the first one that can. Raises ``ValueError`` listing every refusal."""
    names = list(BACKENDS) if backend == "auto" else [backend]
    reasons = []
    for name in names:
        module = get_backend(name)
        reason = module.can_run(x, w, geometry)
        if reason is None:
            return module
        reasons.append(f"{name}: {reason}")
    raise ValueError("no backend can compute this call: " + "; ".join(reasons))
