"""The demo's experiment: networks that differ only in their middle layer, trained on aligned
images (or on randomly shifted ones), tested on the aligned test images and on the same images
shifted by 1 to ``MAX_SHIFT`` pixels.

Every network is ``middle -> ReLU -> global max pooling over space -> linear classifier``. The
middle layer maps the one-channel image to ``channels`` maps of the same size, and is the only
layer that sees positions: the head takes each channel's largest response wherever it is, so
what a network does with a shifted image is decided by the middle layer's weight sharing alone.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..costs import layer_costs
from ..lowrank import LowRankLocallyConnected2d
from ..modules import LocallyConnected2d
from ..sharing import TiledLocallyConnected2d
from .data import DATASETS, DIRECTIONS, MAX_SHIFT, load_dataset, random_shifts, shift_images, split

__all__ = ["LAYERS", "TRAININGS", "Result", "mean_std", "middle_layer", "build_network", "evaluate", "run_demo"]

LAYERS = ("fully connected", "locally connected", "tiled 2x2", "low-rank 4", "convolution")
#: ``aligned``: the training images as they are; ``shifted``: each training image moved by a random
#: shift of up to ``MAX_SHIFT`` pixels per axis, drawn anew every epoch (augmentation).
TRAININGS = ("aligned", "shifted")
_COST_ROW = {"fully connected": "fully connected", "locally connected": "locally connected",
             "tiled 2x2": "tiled", "low-rank 4": "low-rank", "convolution": "convolution"}


def middle_layer(kind: str, size: tuple[int, int], channels: int, kernel: int) -> nn.Module:
    """A layer of the given kind from ``(N, 1, H, W)`` to ``(N, channels, H, W)``."""
    pad = kernel // 2
    if kind == "fully connected":
        h, w = size
        return nn.Sequential(nn.Flatten(), nn.Linear(h * w, channels * h * w), nn.Unflatten(1, (channels, h, w)))
    if kind == "locally connected":
        return LocallyConnected2d(1, channels, kernel, padding=pad, input_size=size)
    if kind == "tiled 2x2":
        return TiledLocallyConnected2d(1, channels, kernel, padding=pad, input_size=size, tile_size=2)
    if kind == "low-rank 4":
        return LowRankLocallyConnected2d(1, channels, kernel, padding=pad, input_size=size, rank=4)
    if kind == "convolution":
        return nn.Conv2d(1, channels, kernel, padding=pad)
    raise ValueError(f"layer must be one of {LAYERS}, got {kind!r}")


def build_network(kind: str, size: tuple[int, int], channels: int, kernel: int, classes: int) -> nn.Sequential:
    """``middle -> ReLU -> global max pooling -> Linear(channels, classes)``."""
    return nn.Sequential(middle_layer(kind, size, channels, kernel), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
                         nn.Flatten(), nn.Linear(channels, classes))


@dataclass
class Result:
    """One dataset, middle layer and training, over seeds. Accuracies are fractions in [0, 1]."""

    dataset: str
    layer: str
    training: str
    parameters: int          # whole network
    middle_parameters: int   # the middle layer alone
    multiply_adds: int       # middle layer, per image
    epochs: int
    by_shift: list[list[float]] = field(default_factory=list)  # per seed: accuracy at shift 0..MAX_SHIFT
    seconds: list[float] = field(default_factory=list)         # per seed: training time

    @property
    def seeds(self) -> int:
        return len(self.by_shift)

    def _values(self, shifts: slice) -> list[float]:
        return [statistics.fmean(accuracies[shifts]) for accuracies in self.by_shift]

    @property
    def accuracies(self) -> list[float]:
        """Per seed: accuracy on the aligned test images."""
        return self._values(slice(0, 1))

    @property
    def shifted_accuracies(self) -> list[float]:
        """Per seed: accuracy on the test images shifted by 1 to ``MAX_SHIFT`` pixels, averaged."""
        return self._values(slice(1, None))

    def shift_curve(self) -> list[tuple[float, float | None]]:
        """``(mean, standard deviation or None)`` over seeds at each shift ``0..MAX_SHIFT``."""
        return [mean_std(list(column)) for column in zip(*self.by_shift)]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, max_shift: int = MAX_SHIFT) -> list[float]:
    """Accuracy at each shift ``0..max_shift``: shift 0 is the images as they are; shift ``s`` is the
    mean over the four :data:`DIRECTIONS`, each moving every image by ``s`` pixels (zero fill)."""
    model.eval()
    accuracies = []
    for s in range(max_shift + 1):
        moves = [(0, 0)] if s == 0 else [(s * dy, s * dx) for dy, dx in DIRECTIONS]
        batch = torch.cat([shift_images(images, dy, dx) for dy, dx in moves])
        correct = model(batch).argmax(1) == labels.repeat(len(moves))
        accuracies.append(correct.float().mean().item())
    return accuracies


def _train(model, x, y, train_idx, epochs, seed, batch_size, shifted, lr=1e-2, tick=None) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # one pass: 8 -> 2 ms a step at 3.7M weights
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            images = random_shifts(x[batch], MAX_SHIFT, gen) if shifted else x[batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(images), y[batch]).backward()
            opt.step()
        if tick:
            tick()


def run_demo(datasets=("digits", "faces"), seeds: int = 3, epochs: int | None = None, quick: bool = False,
             progress: bool = True, trainings=TRAININGS, threads: int | None = 1) -> tuple[list[Result], dict]:
    """Train every middle layer on every dataset with every training, for ``seeds`` seeds (seed ``s``
    draws the train/test split, the initial weights and the batches), on ``threads`` PyTorch threads
    (``None``: as set; the networks are small, and on 2 busy cores two threads ran 9x slower than one).

    Returns the results and, for seed 0, ``{(dataset, layer, training): (initial middle layer,
    trained network)}`` for the figures.
    """
    for name in datasets:
        if name not in DATASETS:
            raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {name!r}")
    for training in trainings:
        if training not in TRAININGS:
            raise ValueError(f"training must be one of {TRAININGS}, got {training!r}")
    plan = []
    for name in datasets:
        spec = DATASETS[name]
        n_epochs = epochs or (spec.quick_epochs if quick else spec.epochs)
        plan += [(name, kind, training, seed, n_epochs)
                 for training in trainings for kind in LAYERS for seed in range(seeds)]
    data = {name: load_dataset(name) for name in datasets}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        return _run(plan, data, _progress(sum(p[-1] for p in plan), progress))
    finally:
        torch.set_num_threads(previous)


def _run(plan, data, bar) -> tuple[list[Result], dict]:
    results, models = {}, {}
    for name, kind, training, seed, n_epochs in plan:
        spec, (x, y, classes) = DATASETS[name], data[name]
        size = tuple(x.shape[-2:])
        torch.manual_seed(seed)
        model = build_network(kind, size, spec.channels, spec.kernel_size, len(classes))
        key = (name, kind, training)
        if key not in results:
            costs = {r.name: r.macs for r in layer_costs(size, 1, spec.channels, spec.kernel_size,
                                                         padding=spec.kernel_size // 2, tile_size=2, rank=4)}
            results[key] = Result(name, kind, training, _count(model), _count(model[0]), costs[_COST_ROW[kind]],
                                  n_epochs)
            models[key] = (copy.deepcopy(model[0]), model)
        train_idx, test_idx = split(y, seed)
        bar.set_description(f"{name}: {kind}, {training} training, seed {seed}")
        start = time.perf_counter()
        _train(model, x, y, train_idx, n_epochs, seed, spec.batch_size, training == "shifted", tick=bar.update)
        results[key].seconds.append(time.perf_counter() - start)
        results[key].by_shift.append(evaluate(model, x[test_idx], y[test_idx]))
    bar.close()
    return list(results.values()), models


class _PlainProgress:
    """Fallback progress display: one line per model when tqdm is not installed."""

    def __init__(self, total, enabled):
        self.total, self.done, self.enabled = total, 0, enabled

    def set_description(self, text):
        if self.enabled:
            print(f"[{self.done}/{self.total} epochs] {text}", flush=True)

    def update(self, n=1):
        self.done += n

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(total, enabled)
    return tqdm(total=total, unit="epoch", disable=not enabled, leave=False)
