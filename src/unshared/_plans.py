"""Plans of the functional forms: what a call's checks and choices found, kept per configuration.

Everything :mod:`unshared.functional` checks and decides before it computes (argument values,
tensor types, dtypes, devices and shapes, the geometry and its validation, the backend) depends
only on the call's arguments and its tensors' metadata, never on their data. The first call of a
configuration does it all; later calls whose key (:func:`key`) is equal reuse its :class:`Plan`
and only check what the key does not hold. A call that raises stores nothing, so bad input
raises the same error every time. No key (no plan) for tensor subclasses, argument values whose
equality is looser than their meaning (``1 == 1.0 == True``: only ints, strings and tuples of 1 to
3 ints make keys), while ``torch.compile`` or
``torch.jit.trace`` traces, nor for non-zero padding modes (their padding is a computation).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._utils import Geometry
from .backends import checks, current_settings, measuring

__all__ = ["Plan", "key", "lookup", "store", "clear"]

_PLAIN = (Tensor, nn.Parameter)
_LIMIT = 1024


class Plan(NamedTuple):
    """A checked configuration: its geometry (validated), the backend and whether the input is unbatched."""

    geometry: Geometry
    entry: checks.Entry
    backend: str
    unbatched: bool


_PLANS: dict[tuple, Plan] = {}


_INT_TUPLES = {(int,), (int, int), (int, int, int)}


def key(name: str, input, weight, bias, arguments: tuple) -> tuple | None:
    """The key of a call (``arguments``: its non-tensor arguments), or ``None`` when it has none."""
    if (type(input) not in _PLAIN or type(weight) not in _PLAIN or (bias is not None and type(bias) not in _PLAIN)
            or torch.compiler.is_compiling() or torch.jit.is_tracing()):
        return None
    for value in arguments:  # ints, strings, None, 1 to 3 ints: equality as strict as their meaning
        kind = type(value)
        if not (kind is int or kind is str or value is None
                or (kind is tuple and tuple(map(type, value)) in _INT_TUPLES)):
            return None
    tensors = (input.shape, input.dtype, input.device, weight.shape, weight.dtype, weight.device)
    if bias is not None:
        tensors += (bias.shape, bias.dtype, bias.device)
    return (name, *tensors, *arguments, current_settings(), measuring())


def lookup(found_key: tuple | None) -> Plan | None:
    """The plan stored for ``found_key`` (``None``: none, or no key)."""
    return None if found_key is None else _PLANS.get(found_key)


def store(found_key: tuple | None, geometry: Geometry, backend: str, unbatched: bool) -> None:
    """Keep the plan of a configuration that passed every check for ``found_key`` (none without a key)."""
    if found_key is None:
        return
    if len(_PLANS) >= _LIMIT:
        _PLANS.clear()
    _PLANS[found_key] = Plan(geometry, checks.entry_of(geometry), backend, unbatched)


def clear() -> None:
    """Forget every plan."""
    _PLANS.clear()
