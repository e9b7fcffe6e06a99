"""The functional forms' plans: what a call's checks and choices found, kept per configuration.

Everything :mod:`unshared.functional` checks and decides before it computes (argument values,
tensor types, dtypes, devices and shapes, the geometry and its validation, the backend) depends
only on the call's arguments and its tensors' metadata, never on their data. The first call of a
configuration does it all and keeps a :class:`~unshared.backends.compute.Plan` (its geometry, its
backend, what the backend prepared) in the one cache (:mod:`unshared._cache`); later calls whose
key (:func:`lookup`) is equal take the plan and compute. A call that raises stores nothing, so bad
input raises the same error every time. No key (no plan) for tensor subclasses, argument values
whose equality is looser than their meaning (``1 == 1.0 == True``: only ints, strings and tuples
of 1 to 3 ints, or of such tuples, make keys), under autocast, while ``torch.compile`` or
``torch.jit.trace`` traces, nor for non-zero padding modes (their padding is a computation).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._cache import CACHE, remember
from .backends import checks, compute, derivatives
from .backends.selection import MEASURING
from .backends.settings import SETTINGS

__all__ = ["lookup", "store", "clear"]

_PLAIN = (Tensor, nn.Parameter)
_INT_TUPLES = {(int,), (int, int), (int, int, int)}


def _int_pairs(value) -> bool:
    """Whether ``value`` is a tuple of 1 to 3 ``(low, high)`` int pairs (one-sided padding)."""
    return (type(value) is tuple and 1 <= len(value) <= 3
            and all(type(v) is tuple and tuple(map(type, v)) == (int, int) for v in value))


def lookup(name: str, input, weight, bias, arguments: tuple) -> tuple[tuple | None, compute.Plan | None, bool]:
    """The key of a call (``arguments``: its non-tensor arguments), or ``None`` when it has none;
    the plan kept for it (now the most recently used), or ``None``; and whether the backend may
    compute it directly (plain tensors, nothing observing: see
    :func:`unshared.backends.derivatives.applies`)."""
    if (type(input) not in _PLAIN or type(weight) not in _PLAIN or (bias is not None and type(bias) not in _PLAIN)
            or torch.compiler.is_compiling() or torch.jit.is_tracing()
            or ((input.is_cpu or input.is_cuda) and torch.is_autocast_enabled(input.device.type))):
        return None, None, False
    for value in arguments:  # equality as strict as their meaning (the common kinds inline: no frame)
        kind = type(value)
        if not (kind is int or kind is str or value is None
                or (kind is tuple and tuple(map(type, value)) in _INT_TUPLES)) and not _int_pairs(value):
            return None, None, False
    found = (name, input.shape, input.dtype, input.device, weight.shape, weight.dtype, weight.device,
             *arguments, SETTINGS.get(), MEASURING[0])
    if bias is not None:
        found += (bias.shape, bias.dtype, bias.device)
    direct = derivatives.applies(input, weight, bias)
    plan = CACHE.get(found)
    if plan is not None:
        try:
            CACHE.move_to_end(found)
        except KeyError:  # evicted by another thread meanwhile
            pass
    return found, plan, direct


def store(found_key: tuple | None, geometry, backend: str, unbatched: bool) -> compute.Plan:
    """The plan of a configuration that passed every check, kept for ``found_key`` (when there is one)."""
    plan = compute.Plan(checks.entry(geometry.encode()), backend, unbatched)
    if found_key is not None:
        remember(found_key, plan)
    return plan


def clear() -> None:
    """Forget every plan (and everything else the one cache keeps)."""
    CACHE.clear()
