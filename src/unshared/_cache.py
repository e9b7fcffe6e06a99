"""The one bounded cache of what calls work out before they compute.

A call's checks and choices depend only on its arguments and its tensors' metadata, never on
their data, so what they find is kept here, under a key that holds everything that decides it:
the functional forms' plans (:mod:`unshared._plans`), the operators' validated geometries
(:mod:`unshared.backends.checks`), the instruction set and weight layouts of the compiled kernels
(:mod:`unshared.backends.cpu`), the index tensors of filter banks and of the one-shot scatter
(:mod:`unshared._banks`). Each key is a tuple whose first item names what it holds.
Least recently used entries go first once :data:`LIMIT` are kept. A call that raises stores
nothing, so bad input raises every time.

Hot paths read :data:`CACHE` directly (``CACHE.get(key)``: no Python frame); :func:`remember`
stores and evicts; :func:`cached` does both, and nothing while ``torch.compile`` traces.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

__all__ = ["CACHE", "LIMIT", "remember", "cached", "clear"]

#: how many entries the cache keeps
LIMIT = 2048
#: key -> value, least recently used first
CACHE: OrderedDict = OrderedDict()


def remember(key: tuple, value):
    """Keep ``value`` under ``key`` (the newest entry), dropping the least recently used beyond
    :data:`LIMIT`; returns ``value``."""
    CACHE[key] = value
    CACHE.move_to_end(key)
    while len(CACHE) > LIMIT:
        try:
            CACHE.popitem(last=False)
        except KeyError:  # emptied by another thread meanwhile
            break
    return value


def cached(key: tuple, make: Callable[[], object]):
    """The value kept under ``key``, made by ``make()`` and kept the first time. While Dynamo traces
    (``torch.compile``, ``torch.export``), ``make()`` afresh and the cache untouched: Dynamo would
    guard on the cache's contents, and a later call would recompile "on the same frame"."""
    if torch.compiler.is_compiling():
        return make()
    found = CACHE.get(key)
    return found if found is not None else remember(key, make())


def clear() -> None:
    """Forget everything (tests: a plan keeps the backend that an earlier state chose)."""
    CACHE.clear()
