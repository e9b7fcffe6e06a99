"""Large transient CPU buffers mapped with transparent huge pages.

A fresh CPU allocation of hundreds of MiB spends more time in 4 KiB page faults than the
arithmetic that fills it (measured: 120 ms to first-touch 251 MiB on a 2-core machine, 22 ms with
huge pages). PyTorch's CPU allocator uses huge pages only when ``THP_MEM_ALLOC_ENABLE=1`` is set
before its first allocation, so the backends map their large buffers here, anonymously, with
``MADV_HUGEPAGE``; the tensor owns the mapping, which is unmapped when the tensor dies. Other
devices, small buffers, platforms without ``MADV_HUGEPAGE`` and kernels that refuse the mapping or
the advice (no transparent huge pages: ``madvise`` fails with ``EINVAL``) get plain ``torch.empty``.

The compiled CPU kernels' outputs and gradients of ``current_settings().pooled_from_bytes`` or more
are pooled (:func:`pooled_buffer`): a training step would otherwise first-touch fresh memory every
step (DeepFace L4's weight gradient: 251 MiB, about 20 ms of page faults even with huge pages; a
20 MiB output that malloc gave back to the system: 5,000 page faults, longer than the kernel that
fills it). A pooled buffer is handed out again only once no tensor holds its
memory any more (its storage's use count and its storage object's references are back to the
pool's own, its pointer and size unchanged), so a gradient that anyone still holds (``param.grad``
kept by ``zero_grad(set_to_none=False)``, a view, its storage object, a hook's reference) is never
written over. :func:`release_pooled_buffers` returns the memory.
"""
from __future__ import annotations

import math
import mmap
import sys
import threading

import torch

from .settings import current_settings

__all__ = ["empty_buffer", "pooled_buffer", "release_pooled_buffers"]


def empty_buffer(shape, *, dtype=None, device=None, zero: bool = False) -> torch.Tensor:
    """``torch.empty`` (``torch.zeros`` with ``zero=True``), huge-page mapped on a CPU from
    ``current_settings().huge_page_bytes`` on (anonymous mappings are zero-filled: ``zero`` is free)."""
    dtype = dtype or torch.get_default_dtype()
    device = torch.device(device) if device is not None else torch.device("cpu")
    numel = math.prod(shape)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    plain = (torch.zeros if zero else torch.empty)
    if device.type != "cpu" or nbytes < current_settings().huge_page_bytes or not hasattr(mmap, "MADV_HUGEPAGE"):
        return plain(shape, dtype=dtype, device=device)
    try:
        mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        return plain(shape, dtype=dtype, device=device)
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        mapping.close()
        return plain(shape, dtype=dtype, device=device)
    return torch.frombuffer(mapping, dtype=dtype, count=numel).view(shape)


# The pooled buffers: (flat tensor, what :func:`_holders` says of it when only the pool holds it).
_POOL: list[tuple[torch.Tensor, tuple]] = []
_POOL_LOCK = threading.Lock()


def _holders(t: torch.Tensor) -> tuple | None:
    """What tells whether anything but ``t`` holds its memory: the storage's use count (tensors and
    views), the Python references to its storage object (a held ``untyped_storage()`` is the same
    object, and adds no use count), and its pointer and size (``resize_``, ``share_memory_``
    change them). ``None`` where PyTorch cannot tell (no pooling then)."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None
    storage = t.untyped_storage()
    return count(storage._cdata), sys.getrefcount(storage), storage.data_ptr(), storage.nbytes()


def pooled_buffer(shape, *, dtype=None, device=None, memory_format=torch.contiguous_format) -> torch.Tensor:
    """An uninitialised ``shape`` tensor like :func:`empty_buffer`'s, in ``memory_format``; CPU
    buffers of at least ``pooled_from_bytes`` come from a pool of earlier ones that nothing holds
    any more (their pages already touched), up to ``current_settings().pooled_bytes`` pooled in
    all. The tensor returned is the caller's: the pool hands its memory out again only after every
    tensor and storage object on it is gone. Not in inference mode (its tensors could not be used
    outside it)."""
    dtype = dtype or torch.get_default_dtype()
    nbytes, limits = math.prod(shape) * dtype.itemsize, current_settings()
    if nbytes < max(1, limits.pooled_from_bytes):  # small buffers: no more than torch.empty costs
        return torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    shape, device = tuple(shape), torch.device(device) if device is not None else torch.device("cpu")
    order = _dimension_order(len(shape), memory_format)
    if device.type != "cpu" or nbytes > limits.pooled_bytes or torch.is_inference_mode_enabled():
        if order != sorted(order):
            return torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
        return empty_buffer(shape, dtype=dtype, device=device)
    stride, step = [0] * len(shape), 1
    for d in reversed(order):
        stride[d], step = step, step * max(1, shape[d])
    flat = _pooled_flat(nbytes // dtype.itemsize, nbytes, dtype, device, limits.pooled_bytes)
    # not a view of the pool's tensor (an autograd Function's output may not be a view made inside it)
    return torch.empty((0,), dtype=dtype, device=device).set_(flat.untyped_storage(), 0, shape, stride)


def _dimension_order(ndim: int, memory_format: torch.memory_format) -> list[int]:
    """The dimensions of a ``memory_format`` tensor from outermost to innermost in memory."""
    if memory_format in (torch.channels_last, torch.channels_last_3d) and ndim in (4, 5):
        return [0, *range(2, ndim), 1]
    if memory_format not in (torch.contiguous_format, torch.channels_last, torch.channels_last_3d):
        raise ValueError(f"pooled_buffer: memory_format must be contiguous or channels-last, got {memory_format}")
    return list(range(ndim))


def _pooled_flat(numel: int, nbytes: int, dtype: torch.dtype, device: torch.device, pooled_bytes: int) -> torch.Tensor:
    """A flat buffer of ``numel`` elements (``nbytes``) from the pool, or new and pooled (the
    oldest dropped to keep at most ``pooled_bytes``)."""
    with _POOL_LOCK:
        for base, alone in list(_POOL):
            if base.dtype != dtype or base.numel() != numel:
                continue
            now = _holders(base)
            if now[2:] != alone[2:]:  # resized or moved (shared memory): no longer the pool's memory
                _POOL.remove((base, alone))
            elif now == alone:
                return base.view(-1)  # a new tensor on the memory: its use count is now above `alone`
        base = empty_buffer((numel,), dtype=dtype, device=device)
        alone = _holders(base)
        if alone is None:
            return base
        pooled = sum(b.numel() * b.element_size() for b, _ in _POOL)
        while _POOL and pooled + nbytes > pooled_bytes:  # the oldest make room
            dropped, _ = _POOL.pop(0)
            pooled -= dropped.numel() * dropped.element_size()
        _POOL.append((base, alone))
        return base.view(-1)


def release_pooled_buffers() -> int:
    """Drop the pool (tensors still using its memory keep it until they die); returns the bytes
    the pool held.

    Example (after training, before a long evaluation)::

        >>> from unshared.backends import release_pooled_buffers
        >>> held = release_pooled_buffers()  # the bytes of gradients no longer held by anything
        >>> release_pooled_buffers()  # the pool is empty now
        0
    """
    with _POOL_LOCK:
        held = sum(b.numel() * b.element_size() for b, _ in _POOL)
        _POOL.clear()
    return held
