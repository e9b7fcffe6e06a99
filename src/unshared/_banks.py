"""Filter banks: checking the ``banks=`` coordinates of the functional forms, and the int64 index
tensors the backends read them through (built once per banks and device, see :func:`cached_index`)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _cache

__all__ = ["bank_coordinates", "build_flat_bank_index", "cached_index", "check_banks"]

def bank_coordinates(banks: tuple[tuple[int, ...], ...] | None, device) -> tuple[torch.Tensor, ...] | None:
    """Per dimension, the int64 bank coordinate of every output coordinate (``banks[d]``), shaped to
    broadcast over the output grid, on ``device`` (built once per banks and device); ``None`` for
    ``None``. Indexing a per-bank tensor's grid dimensions with them gives its per-position values."""
    if banks is None:
        return None
    return cached_index(("coordinates", banks, torch.device(device)), build_bank_coordinates)


def cached_index(key, build):
    """``build(*key[1:])``, kept in the one cache (:mod:`unshared._cache`, under ``("index", key)``)
    for later calls when it made plain tensors: never a fake or traced tensor (made while
    ``torch.compile``, ``torch.jit.trace`` or an exporter traces), nor one that a ``torch.func``
    transform wraps (made inside ``jacfwd``, say), which must not outlive it."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return build(*key[1:])
    value = _cache.CACHE.get(("index", key))
    if value is None:
        value = build(*key[1:])
        tensors = value if isinstance(value, tuple) else (value,)
        if all(type(t) is torch.Tensor and not torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors):
            _cache.remember(("index", key), value)
    return value


def build_flat_bank_index(banks, weight_grid, device) -> torch.Tensor:
    flat = torch.zeros((), dtype=torch.int64, device="cpu")  # explicit: a default-device context may be set
    for coords, size in zip(banks, weight_grid):
        flat = flat.unsqueeze(-1) * size + torch.tensor(coords, dtype=torch.int64, device="cpu")
    return flat.flatten().to(device)


def build_bank_coordinates(banks, device) -> tuple[torch.Tensor, ...]:
    nd = len(banks)
    return tuple(torch.tensor(c, dtype=torch.int64, device="cpu").view(*(1,) * d, -1, *(1,) * (nd - d - 1)).to(device)
                 for d, c in enumerate(banks))


def check_banks(banks, weight_grid: tuple[int, ...], name: str) -> tuple[tuple[int, ...], ...]:
    """Normalise ``banks`` (one sequence of bank coordinates per spatial dimension, ints or 1-d
    integer tensors) and check each coordinate against the weight's bank grid."""
    nd = len(weight_grid)
    if isinstance(banks, torch.Tensor) or not isinstance(banks, Sequence) or len(banks) != nd:
        raise TypeError(f"{name}: banks must be a sequence of {nd} sequences (the bank coordinate of each "
                        f"output coordinate, per dimension), got {banks!r}")
    result = []
    for d, (coords, size) in enumerate(zip(banks, weight_grid)):
        if isinstance(coords, torch.Tensor):
            if coords.dim() != 1 or coords.is_floating_point() or coords.is_complex():
                raise TypeError(f"{name}: banks[{d}] must be a 1-d integer tensor, got dtype={coords.dtype}, "
                                f"shape {tuple(coords.shape)}")
            coords = coords.tolist()
        if not isinstance(coords, Sequence) or not coords or not all(
                isinstance(c, int) and not isinstance(c, bool) for c in coords):
            raise TypeError(f"{name}: banks[{d}] must be a non-empty sequence of ints, got {coords!r}")
        bad = [c for c in coords if not 0 <= c < size]
        if bad:
            raise ValueError(f"{name}: banks[{d}] holds bank coordinate {bad[0]}, outside the weight's bank "
                             f"grid {tuple(weight_grid)} (0 <= coordinate < {size})")
        result.append(tuple(coords))
    return tuple(result)
