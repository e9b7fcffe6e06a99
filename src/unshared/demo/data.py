"""The demo's data: images that ship inside installable packages (no download), and shifts.

Every image is placed in a canvas with a ``MAX_SHIFT``-pixel zero border, so that moving it by up
to ``MAX_SHIFT`` pixels (with zero fill) loses none of it: a shifted test image holds exactly the
same pixels as the aligned one, in another place.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["MissingExtra", "DatasetSpec", "DATASETS", "MAX_SHIFT", "DIRECTIONS", "load_dataset",
           "split", "shift_images", "random_shifts"]

#: The largest shift tested (and used for augmentation), in pixels; also the canvas border.
MAX_SHIFT = 3
#: The directions of a test shift ``s`` (up, right, down, left): the image moves by ``(s * dy, s * dx)``.
DIRECTIONS = ((-1, 0), (0, 1), (1, 0), (0, -1))


class MissingExtra(ImportError):
    """An optional dependency is missing; the message says which ``pip install`` fixes it."""


def require(module: str, package: str):
    """Import ``module``, or raise :class:`MissingExtra` naming ``package``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"the demo needs {package}: pip install 'unshared[demo]'") from None


@dataclass(frozen=True)
class DatasetSpec:
    """How the demo trains on one dataset."""

    title: str
    classes: int
    channels: int        # output channels of the middle layer
    kernel_size: int
    epochs: int
    quick_epochs: int
    batch_size: int


DATASETS = {
    "digits": DatasetSpec("handwritten digits, 8x8 in a 14x14 canvas (scikit-learn load_digits)",
                          classes=10, channels=16, kernel_size=7, epochs=10, quick_epochs=2, batch_size=64),
    "faces": DatasetSpec("faces vs non-faces, 25x25 in a 31x31 canvas (scikit-image lfw_subset)",
                         classes=2, channels=4, kernel_size=5, epochs=20, quick_epochs=5, batch_size=32),
}


def load_dataset(name: str, border: int = MAX_SHIFT) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(images (N, 1, H + 2 border, W + 2 border) float32 in [0, 1], labels (N,) int64, class names)``."""
    if name == "digits":
        digits = require("sklearn.datasets", "scikit-learn").load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        labels, classes = torch.tensor(digits.target), [str(i) for i in range(10)]
    elif name == "faces":
        faces = require("skimage.data", "scikit-image").lfw_subset()  # 100 faces, then 100 non-faces
        images = torch.tensor(faces, dtype=torch.float32)
        labels = torch.cat([torch.ones(100, dtype=torch.long), torch.zeros(100, dtype=torch.long)])
        classes = ["non-face", "face"]
    else:
        raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {name!r}")
    return F.pad(images.unsqueeze(1), (border,) * 4), labels, classes


def split(labels: torch.Tensor, seed: int, test_fraction: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified ``(train, test)`` indices, drawn with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = int(round(len(idx) * test_fraction))
        test.append(idx[:cut])
        train.append(idx[cut:])
    return torch.cat(train), torch.cat(test)


def _gather(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Each image ``i`` of ``(N, C, H, W)`` moved ``dy[i]`` pixels down and ``dx[i]`` right, zero fill
    (``pad`` bounds the shifts)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad,) * 4)
    rows = torch.arange(h) + pad - dy[:, None]      # (N, H): the padded row each output row reads
    cols = torch.arange(w) + pad - dx[:, None]      # (N, W)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def shift_images(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``(N, C, H, W)`` images moved ``dy`` pixels down and ``dx`` pixels right (negative: up, left),
    filling with zeros."""
    n = images.shape[0]
    pad = max(abs(dy), abs(dx))
    return _gather(images, torch.full((n,), dy), torch.full((n,), dx), pad)


def random_shifts(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by its own random shift, uniform in ``[-max_shift, max_shift]`` per axis
    (the augmentation of the demo's ``shifted`` training)."""
    d = torch.randint(-max_shift, max_shift + 1, (2, images.shape[0]), generator=generator)
    return _gather(images, d[0], d[1], max_shift)
