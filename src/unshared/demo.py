"""``unshared demo``: small networks that differ only in their middle layer, trained on real images.

Every network is ``middle -> ReLU -> flatten -> linear classifier``; the middle layer maps a
one-channel image to ``channels`` maps of the same size and is, in turn, fully connected, locally
connected, tiled, low-rank or a convolution. The data ship inside installable packages (no
download): handwritten digits (scikit-learn) and faces vs non-faces (scikit-image).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .lowrank import LowRankLocallyConnected2d
from .modules import LocallyConnected2d
from .sharing import TiledLocallyConnected2d

__all__ = ["DATASETS", "load_dataset", "build_network", "run_demo", "MissingExtra"]


class MissingExtra(ImportError):
    """An optional dependency is missing; the message says which ``pip install`` fixes it."""


def _require(module: str, package: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"the demo needs {package}: pip install 'unshared[demo]'") from None


@dataclass(frozen=True)
class DatasetSpec:
    title: str
    kernel_size: int
    channels: int
    epochs: int
    quick_epochs: int


DATASETS = {
    "digits": DatasetSpec("handwritten digits, 8x8 (scikit-learn load_digits)", 3, 8, 30, 4),
    "faces": DatasetSpec("faces vs non-faces, 25x25 (scikit-image lfw_subset)", 5, 4, 40, 5),
}


def load_dataset(name: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(images (N, 1, H, W) float32 in [0, 1], labels (N,) int64, class names)``."""
    if name == "digits":
        digits = _require("sklearn.datasets", "scikit-learn").load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        return images.unsqueeze(1), torch.tensor(digits.target), [str(i) for i in range(10)]
    if name == "faces":
        faces = _require("skimage.data", "scikit-image").lfw_subset()  # 100 faces, then 100 non-faces
        images = torch.tensor(faces, dtype=torch.float32).unsqueeze(1)
        labels = torch.cat([torch.ones(100, dtype=torch.long), torch.zeros(100, dtype=torch.long)])
        return images, labels, ["non-face", "face"]
    raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {name!r}")


def _split(labels: torch.Tensor, seed: int, test_fraction: float = 0.25):
    """Stratified train/test indices."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = int(round(len(idx) * test_fraction))
        test.append(idx[:cut])
        train.append(idx[cut:])
    return torch.cat(train), torch.cat(test)


LAYERS = ("fully connected", "locally connected", "tiled 2x2", "low-rank 4", "convolution")


def middle_layer(kind: str, size: tuple[int, int], channels: int, kernel: int) -> nn.Module:
    """A layer from ``(N, 1, H, W)`` to ``(N, channels, H, W)`` of the given kind."""
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


def build_network(kind: str, size, channels: int, kernel: int, classes: int) -> nn.Sequential:
    return nn.Sequential(middle_layer(kind, size, channels, kernel), nn.ReLU(), nn.Flatten(),
                         nn.Linear(channels * size[0] * size[1], classes))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _multiply_adds(middle: nn.Module, size, channels: int, kernel: int) -> int:
    positions = size[0] * size[1]
    if isinstance(middle, nn.Sequential):  # fully connected
        return positions * channels * positions
    per_position = channels * kernel * kernel
    rank = getattr(middle, "rank", 1)
    return rank * positions * per_position + (rank * channels * positions if rank > 1 else 0)


@dataclass
class Result:
    dataset: str
    layer: str
    parameters: int          # whole network
    middle_parameters: int   # the middle layer alone
    multiply_adds: int       # middle layer, per image
    accuracies: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def spread(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def _train(model, x, y, train_idx, test_idx, epochs, seed, batch_size=32, lr=3e-3, tick=None) -> float:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[batch]), y[batch]).backward()
            opt.step()
        if tick:
            tick()
    model.eval()
    with torch.no_grad():
        return (model(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item()


def run_demo(datasets=("digits", "faces"), seeds: int = 3, epochs: int | None = None, quick: bool = False,
             progress: bool = True) -> tuple[list[Result], dict]:
    """Train every layer kind on every dataset for ``seeds`` seeds; returns results and the first
    seed's trained models (``{(dataset, layer): model}``) for the figures."""
    torch.set_num_threads(torch.get_num_threads())
    results, models = [], {}
    plan = []
    for name in datasets:
        spec = DATASETS[name]
        n_epochs = epochs or (spec.quick_epochs if quick else spec.epochs)
        plan += [(name, spec, kind, seed, n_epochs) for kind in LAYERS for seed in range(seeds)]
    bar = _progress(sum(p[-1] for p in plan), progress)
    data = {name: load_dataset(name) for name in datasets}
    for name, spec, kind, seed, n_epochs in plan:
        x, y, classes = data[name]
        size = tuple(x.shape[-2:])
        torch.manual_seed(seed)
        model = build_network(kind, size, spec.channels, spec.kernel_size, len(classes))
        key = (name, kind)
        if seed == 0:
            results.append(Result(name, kind, _count(model), _count(model[0]),
                                  _multiply_adds(model[0], size, spec.channels, spec.kernel_size)))
            models[key] = model
        result = next(r for r in results if (r.dataset, r.layer) == key)
        train_idx, test_idx = _split(y, seed)
        bar.set_description(f"{name}: {kind}, seed {seed}")
        start = time.perf_counter()
        result.accuracies.append(_train(model, x, y, train_idx, test_idx, n_epochs, seed, tick=bar.update))
        result.seconds.append(time.perf_counter() - start)
    bar.close()
    return results, models


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


def format_results(results: list[Result]) -> str:
    head = ("dataset", "middle layer", "parameters", "middle layer params", "multiply-adds",
            "train s", "test accuracy")
    rows = [(r.dataset, r.layer, f"{r.parameters:,}", f"{r.middle_parameters:,}", f"{r.multiply_adds:,}",
             f"{statistics.fmean(r.seconds):.1f}",
             f"{100 * r.accuracy:.1f}% ± {100 * r.spread:.1f} (n={len(r.accuracies)})") for r in results]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [head, *rows])


def save_figures(results: list[Result], models: dict, output: Path) -> list[Path]:
    """Accuracy against parameters, and the locally connected filters per position next to the
    convolution's single filter bank, as PNG files in ``output``."""
    matplotlib = _require("matplotlib", "matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.mkdir(parents=True, exist_ok=True)
    paths = []
    datasets = sorted({r.dataset for r in results})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        for r in (r for r in results if r.dataset == name):
            ax.errorbar(r.middle_parameters, 100 * r.accuracy, yerr=100 * r.spread, fmt="o", capsize=3)
            ax.annotate(r.layer, (r.middle_parameters, 100 * r.accuracy), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("parameters of the middle layer (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(DATASETS[name].title, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(output / "accuracy_vs_parameters.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    for name in datasets:
        local, conv = models.get((name, "locally connected")), models.get((name, "convolution"))
        if local is None or conv is None:
            continue
        w = local[0].weight.detach()[..., 0, 0, :, :]  # (H, W, k, k): output channel 0, every position
        h, width, k, _ = w.shape
        mosaic = torch.full((h * (k + 1), width * (k + 1)), float("nan"))
        for i in range(h):
            for j in range(width):
                mosaic[i * (k + 1):i * (k + 1) + k, j * (k + 1):j * (k + 1) + k] = w[i, j]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 5), gridspec_kw={"width_ratios": [3, 1]})
        left.imshow(mosaic.numpy(), cmap="RdBu_r")
        left.set_title(f"locally connected: channel 0 filter at each of {h}x{width} positions", fontsize=9)
        cw = conv[0].weight.detach()[:, 0]  # (C, k, k)
        cols = 2
        rows = -(-cw.shape[0] // cols)
        bank = torch.full((rows * (k + 1), cols * (k + 1)), float("nan"))
        for c in range(cw.shape[0]):
            r, q = divmod(c, cols)
            bank[r * (k + 1):r * (k + 1) + k, q * (k + 1):q * (k + 1) + k] = cw[c]
        right.imshow(bank.numpy(), cmap="RdBu_r")
        right.set_title(f"convolution: its {cw.shape[0]} filters,\nshared by every position", fontsize=9)
        for ax in (left, right):
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(DATASETS[name].title, fontsize=10)
        fig.tight_layout()
        paths.append(output / f"filters_{name}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
