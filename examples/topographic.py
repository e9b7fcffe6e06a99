"""A topographic network on the demo's handwritten digits: the same locally connected net trained
with and without All-TNN's smoothness loss (``unshared.topography.smoothness_loss``), and a
picture of its first layer's cortical sheet for both.

    python examples/topographic.py                      # writes docs/topographic_sheet.png
    python examples/topographic.py --quick --output /tmp/sheet.png

The net: ``LocallyConnected2d(1, 16, 5)`` on 14x14 digits (10x10 positions, each with a 4x4
block of channels: a 40x40 sheet), ReLU, 2x2 max-pooling, ``LocallyConnected2d(16, 16, 3)``
(3x3 positions), ReLU, a linear readout. Both runs start from the same weights and see the same
batches; the topographic run adds ``alpha * smoothness_loss`` of both locally connected layers.

The picture shows each unit of the first layer's sheet twice: coloured by its preferred
orientation (the grating, of 8 orientations, its filter answers most strongly) and by its
preferred digit (the class with the highest mean response on the test images), brighter where the
preference is sharper. Without the loss neighbouring units are unrelated (salt and pepper); with it
they form smooth maps, as in All-TNN. Needs scikit-learn (the digits) and matplotlib (the picture):
``pip install 'unshared[demo]'``.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import unshared
from unshared.demo.data import load_dataset, split
from unshared.topography import sheet, smoothness_loss

ROOT = Path(__file__).resolve().parents[1]
ORIENTATIONS = 8


class TopographicNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.layer1 = unshared.LocallyConnected2d(1, 16, 5, input_size=14)       # 16 x 10 x 10
        self.layer2 = unshared.LocallyConnected2d(16, 16, 3, input_size=5)       # 16 x 3 x 3
        self.readout = nn.Linear(16 * 3 * 3, classes)

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.layer1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.first_layer(x), 2)
        return self.readout(F.relu(self.layer2(x)).flatten(1))

    def spatial_loss(self) -> torch.Tensor:
        return smoothness_loss(self.layer1) + smoothness_loss(self.layer2)


def train(net: TopographicNet, images, labels, *, alpha: float, epochs: int, seed: int) -> None:
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(64):
            loss = F.cross_entropy(net(images[batch]), labels[batch])
            if alpha:
                loss = loss + alpha * net.spatial_loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def gratings(size: int = 5, period: float = 4.0) -> torch.Tensor:
    """``(orientations, phases, size, size)`` sinusoidal gratings, unit norm."""
    angles = torch.arange(ORIENTATIONS) * math.pi / ORIENTATIONS
    phases = torch.arange(4) * math.pi / 2
    y, x = torch.meshgrid(torch.arange(size) - size // 2, torch.arange(size) - size // 2, indexing="ij")
    along = x[None] * torch.cos(angles)[:, None, None] + y[None] * torch.sin(angles)[:, None, None]
    waves = torch.cos(2 * math.pi * along[:, None] / period + phases[None, :, None, None]).float()
    return waves / waves.flatten(2).norm(dim=-1)[..., None, None]


def preference(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols, options)`` scores -> the preferred option and how sharp the preference is, in [0, 1]."""
    best = scores.argmax(-1)
    top = scores.max(-1).values
    sharpness = (top - scores.mean(-1)) / top.clamp_min(1e-12)
    return best, (sharpness / sharpness.max().clamp_min(1e-12)).clamp(0, 1)


@torch.no_grad()
def maps(net: TopographicNet, images, labels) -> dict:
    """Per unit of the first layer's sheet: preferred orientation and digit, and their sharpness."""
    filters = sheet(net.layer1)[..., :25]                              # (40, 40, 25): 5x5 filters (bias dropped)
    energy = torch.einsum("rcf,opf->rcop", filters, gratings().flatten(2)).square().sum(-1)
    orientation, orientation_sharpness = preference(energy)
    responses = net.first_layer(images)                               # (N, 16, 10, 10)
    a, b = unshared.topography.default_channel_grid(16)
    per_class = torch.stack([responses[labels == c].mean(0) for c in range(10)], -1)   # (16, 10, 10, classes)
    per_class = per_class.unflatten(0, (a, b)).permute(2, 0, 3, 1, 4).reshape(10 * a, 10 * b, 10)
    digit, digit_sharpness = preference(per_class)
    return {"orientation": (orientation, orientation_sharpness), "digit": (digit, digit_sharpness)}


def agreement(best: torch.Tensor) -> float:
    """The fraction of right and down neighbours on the sheet with the same preference."""
    same = torch.cat([(best[:, 1:] == best[:, :-1]).flatten(), (best[1:] == best[:-1]).flatten()])
    return same.float().mean().item()


def draw(found: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import hsv_to_rgb

    fig, axes = plt.subplots(2, 2, figsize=(7.2, 7.6), layout="constrained")
    for row, (name, result) in enumerate(found.items()):
        for col, (kind, cmap_size) in enumerate((("orientation", ORIENTATIONS), ("digit", 10))):
            best, sharpness = result["maps"][kind]
            if kind == "orientation":   # hue: orientation (cyclic); brightness: selectivity
                hsv = torch.stack([best / cmap_size, torch.full_like(sharpness, 0.9), 0.25 + 0.75 * sharpness], -1)
                rgb = hsv_to_rgb(hsv.numpy())
            else:
                rgb = plt.get_cmap("tab10")(best.numpy())[..., :3] * (0.25 + 0.75 * sharpness.numpy()[..., None])
            ax = axes[row, col]
            ax.imshow(rgb, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: preferred {kind}\nneighbours agree {100 * agreement(best):.0f}%", fontsize=9)
    fig.suptitle("First layer's cortical sheet (10x10 positions x 4x4 channels), digits", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--alpha", type=float, default=10.0, help="weight of the smoothness loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="2 epochs (a check that it runs)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (a tiny net: one is fastest)")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "topographic_sheet.png")
    args = p.parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    torch.set_num_threads(args.threads)

    images, labels, _ = load_dataset("digits")
    train_idx, test_idx = split(labels, args.seed)
    torch.manual_seed(args.seed)
    initial = TopographicNet().state_dict()
    found = {}
    for name, alpha in (("without loss", 0.0), ("with loss", args.alpha)):
        start = time.perf_counter()
        net = TopographicNet()
        net.load_state_dict(initial)
        train(net, images[train_idx], labels[train_idx], alpha=alpha, epochs=epochs, seed=args.seed)
        net.eval()
        with torch.no_grad():
            accuracy = (net(images[test_idx]).argmax(1) == labels[test_idx]).float().mean().item()
            spatial = net.spatial_loss().item()
        found[name] = {"accuracy": accuracy, "smoothness_loss": spatial,
                       "maps": maps(net, images[test_idx], labels[test_idx]), "seconds": time.perf_counter() - start}
    draw(found, args.output)
    print(f"{'run':<14}{'test accuracy':>14}{'smoothness loss':>17}{'orientation agree':>19}{'digit agree':>13}"
          f"{'seconds':>9}")
    for name, result in found.items():   # the loss: mean over the two layers
        print(f"{name:<14}{100 * result['accuracy']:>13.1f}%{result['smoothness_loss'] / 2:>17.3f}"
              f"{100 * agreement(result['maps']['orientation'][0]):>18.0f}%"
              f"{100 * agreement(result['maps']['digit'][0]):>12.0f}%{result['seconds']:>9.1f}")
    print(f"picture: {os.path.relpath(args.output)}")
    return found


if __name__ == "__main__":
    main()
