"""Tunable numbers of the backends, read at call time, changed with a context manager.

The defaults were measured (the comments say where); override them for one block of code, for
example to test a code path on small shapes or to try another block size::

    from unshared.backends import settings
    with settings(block_elements=1 << 16):
        y = layer(x)

Overrides live in a :class:`contextvars.ContextVar`: they apply to the calling thread (and its
``asyncio`` tasks) only, so threads never see each other's settings, and nothing global is patched.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass

import torch

__all__ = ["Settings", "settings", "current_settings", "SETTINGS"]


@dataclass(frozen=True)
class Settings:
    """The backends' tunables (see :func:`settings`).

    Example::

        >>> from unshared.backends import Settings
        >>> Settings().block_elements is None, Settings(block_elements=1 << 16).block_elements
        (True, 65536)
        >>> Settings(block_elements=0)
        Traceback (most recent call last):
        ...
        ValueError: settings: block_elements must be positive, got block_elements=0
    """

    #: Elements of one gathered patch block of the PyTorch backend; ``None``: by device (see
    #: :func:`unshared.backends.blocks.default_block_elements`).
    block_elements: int | None = None
    #: The PyTorch backend's input gradient uses blocks this many times larger: each block costs one
    #: addition per kernel offset, and larger blocks amortise that overhead (DeepFace L4, batch 64,
    #: 2-core CPU: 4455 additions and 390 ms with one output row per block, 1100 and 300 ms with four).
    input_grad_block_factor: int = 8
    #: From this batch size on, the PyTorch backend's input gradient keeps the batch innermost
    #: (DeepFace L4, 2-core CPU: batch 8, 52 ms batch-outer against 115 ms; batch 64, 236 ms
    #: batch-inner against 302 ms).
    batch_inner_from: int = 32
    #: CPU buffers at least this large are mapped with transparent huge pages; smaller ones are left
    #: to malloc (a 30 MiB weight gradient: 5.4 ms from reused heap memory, 13.7 ms mapped), which
    #: may give freed blocks back to the system, hence the pool below.
    huge_page_bytes: int = 64 << 20
    #: The compiled CPU kernels' outputs, input gradients and weight gradients at least this large
    #: come from a pool of buffers that no tensor holds any more (pages already touched): glibc
    #: gives large freed blocks back to the system, and a fresh one page-faults again (genomics 1d,
    #: 4 -> 8 channels, batch 32, 2-core CPU: the 20 MiB output's forward 4-6 ms from the pool,
    #: 9-12 ms with its 5,000 page faults).
    pooled_from_bytes: int = 1 << 20
    #: The pool holds at most this many bytes in all (0: no pool); see :mod:`unshared.backends.buffers`.
    pooled_bytes: int = 4 << 30
    #: With shared filter banks, ``backend="auto"`` runs one convolution per bank when banks hold
    #: at least this many positions on average (fwd+bwd at DeepFace L4, batch 8, 2-core CPU,
    #: 2026-11-22: 25 banks of 121 positions, 142 ms by convolutions against 190 ms by the locally
    #: connected kernel; 121 banks of 25 positions, 505 ms against 213 ms).
    min_positions_per_conv: int = 64
    #: The one-shot plan (:mod:`unshared.backends.unfold`: one patch gather and one batched matmul
    #: per operation) runs only when its temporaries take at most this many bytes (0: never); on
    #: CUDA ``auto`` measures it against the other candidates (as much as the PyTorch backend's
    #: GPU patch block, :data:`unshared.backends.blocks.GPU_BLOCK_ELEMENTS` float32 values).
    one_shot_bytes: int = 256 << 20

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.name == "block_elements":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"settings: {field.name} must be a non-negative int, got {field.name}={value!r}")
        for name in ("block_elements", "input_grad_block_factor"):
            if getattr(self, name) == 0:
                raise ValueError(f"settings: {name} must be positive, got {name}=0")


#: The settings in effect (read it with :func:`current_settings`; hot paths that key a cache on
#: them read ``SETTINGS.get()``, which costs no Python call).
SETTINGS: contextvars.ContextVar[Settings] = contextvars.ContextVar("unshared_settings", default=Settings())


def current_settings() -> Settings:
    """The settings in effect in this thread; the defaults while ``torch.compile`` traces (Dynamo
    cannot trace a ContextVar).

    Example::

        >>> from unshared.backends import Settings, current_settings, settings
        >>> with settings(min_positions_per_conv=8):
        ...     current_settings().min_positions_per_conv
        8
        >>> current_settings() == Settings()
        True
    """
    return Settings() if torch.compiler.is_compiling() else SETTINGS.get()


@contextlib.contextmanager
def settings(**overrides):
    """Override some of :class:`Settings` inside a ``with`` block (this thread only).

    Unknown names raise ``TypeError``; invalid values ``ValueError``.

    Example (the PyTorch backend in blocks of at most 4096 gathered elements)::

        >>> import torch, unshared
        >>> layer = unshared.LocallyConnected2d(3, 4, 3, input_size=16, backend="torch")
        >>> x = torch.randn(2, 3, 16, 16)
        >>> with unshared.backends.settings(block_elements=4096) as inside:
        ...     y = layer(x)
        >>> inside.block_elements, torch.allclose(y, layer(x), atol=1e-6)
        (4096, True)
    """
    token = SETTINGS.set(dataclasses.replace(SETTINGS.get(), **overrides))
    try:
        yield SETTINGS.get()
    finally:
        SETTINGS.reset(token)
