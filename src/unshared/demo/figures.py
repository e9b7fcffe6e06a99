"""The demo's figures (PNG, needs matplotlib): accuracy against parameters, accuracy against shift,
and the filters that a locally connected layer and a convolution learned."""
from __future__ import annotations

from pathlib import Path

import torch

from .data import DATASETS, MAX_SHIFT, require
from .experiment import LAYERS, Result, mean_std
from .report import SHIFTED, SPREAD

__all__ = ["save_figures"]

COLORS = dict(zip(LAYERS, ("#555555", "#d62728", "#ff7f0e", "#9467bd", "#1f77b4")))


def _pyplot():
    matplotlib = require("matplotlib", "matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _bars(mean: float, std: float | None) -> list[list[float]] | None:
    """Error bars of ``mean ± std`` in percent, clipped to [0, 100] (``None`` without a spread)."""
    if std is None:
        return None
    return [[min(100 * std, 100 * mean)], [min(100 * std, 100 - 100 * mean)]]


def _spread_note(results: list[Result]) -> str:
    seeds = sorted({r.seeds for r in results})
    if seeds == [1]:
        return "one seed: no error bars"
    return f"error bars: ± 1 {SPREAD} (n={'/'.join(map(str, seeds))}), clipped at 100%"


def _accuracy_vs_parameters(plt, results: list[Result], datasets: list[str], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.4), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        for r in (r for r in results if r.dataset == name and r.training == "aligned"):
            x = r.middle_parameters
            for values, marker, fill, size, label in ((r.shifted_accuracies, "s", "white", 9, None),
                                                      (r.accuracies, "o", COLORS[r.layer], 6, r.layer)):
                mean, std = mean_std(values)
                ax.errorbar(x, 100 * mean, yerr=_bars(mean, std), fmt=marker, color=COLORS[r.layer],
                            markerfacecolor=fill, markersize=size, capsize=3, label=label)
            ax.plot([x, x], [100 * mean_std(r.accuracies)[0], 100 * mean_std(r.shifted_accuracies)[0]],
                    color=COLORS[r.layer], lw=0.8, alpha=0.6)
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_xlabel("parameters of the middle layer (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(DATASETS[name].title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Trained on aligned images. Dots: aligned test images; open squares: "
                 f"shifted 1-{MAX_SHIFT} px.\n{_spread_note(results)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _accuracy_vs_shift(plt, results: list[Result], datasets: list[str], path: Path) -> Path:
    trainings = [t for t in ("aligned", "shifted") if any(r.training == t for r in results)]
    fig, axes = plt.subplots(len(trainings), len(datasets), figsize=(5 * len(datasets), 3.6 * len(trainings)),
                             squeeze=False, sharey=True)
    for row, training in zip(axes, trainings):
        for ax, name in zip(row, datasets):
            for r in (r for r in results if r.dataset == name and r.training == training):
                curve = r.shift_curve()
                means = [100 * m for m, _ in curve]
                bars = [_bars(m, s) for m, s in curve]
                yerr = None if bars[0] is None else [[b[0][0] for b in bars], [b[1][0] for b in bars]]
                ax.errorbar(range(len(curve)), means, yerr=yerr, marker="o", color=COLORS[r.layer],
                            capsize=3, label=r.layer)
            ax.axhline(100 / DATASETS[name].classes, color="k", ls=":", lw=0.8)
            ax.set_ylim(0, 100)
            ax.set_xticks(range(MAX_SHIFT + 1))
            ax.set_xlabel("shift of the test images (pixels)")
            ax.set_ylabel("test accuracy (%)")
            how = "aligned images" if training == "aligned" else f"images shifted at random by up to {MAX_SHIFT} px"
            ax.set_title(f"{name}: trained on {how}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Shift s: {SHIFTED.replace('1 to 3 pixels', 's pixels')}; dotted: chance.\n"
                 f"{_spread_note(results)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mosaic(filters: torch.Tensor, columns: int) -> torch.Tensor:
    """``(n, k, k)`` filters laid out ``columns`` to a row, one NaN pixel between them."""
    n, k, _ = filters.shape
    rows = -(-n // columns)
    out = torch.full((rows * (k + 1) - 1, columns * (k + 1) - 1), float("nan"))
    for i in range(n):
        r, c = divmod(i, columns)
        out[r * (k + 1):r * (k + 1) + k, c * (k + 1):c * (k + 1) + k] = filters[i]
    return out


def _show(plt, fig, ax, image: torch.Tensor, title: str, label: str) -> None:
    limit = float(image.nan_to_num().abs().max()) or 1.0
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.75")  # bad (NaN): the lines between filters
    shown = ax.imshow(image.numpy(), cmap=cmap, vmin=-limit, vmax=limit)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04).set_label(label, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _filters(plt, models: dict, name: str, path: Path) -> Path | None:
    """Per training, how the locally connected layer's filters changed at each position (for the
    channel that changed most), next to the convolution's trained filters."""
    panels = []
    for training in ("aligned", "shifted"):
        if (name, "locally connected", training) not in models:
            continue
        initial, trained = models[name, "locally connected", training]
        change = (trained[0].weight - initial.weight).detach()[..., 0, :, :]  # (H, W, C, k, k)
        h, w, _, k, _ = change.shape
        channel = int(change.abs().sum((0, 1, 3, 4)).argmax())
        panels.append((_mosaic(change[:, :, channel].flatten(0, 1), w), "change during training "
                       "(red: up, blue: down)", f"locally connected, {training} training: how training\n"
                       f"changed channel {channel}'s filter at each of {h}x{w} positions"))
    if (name, "convolution", "aligned") in models:
        conv = models[name, "convolution", "aligned"][1][0].weight.detach()[:, 0]
        panels.append((_mosaic(conv, 4), "weight (red: positive, blue: negative)",
                       f"convolution, aligned training:\nits {conv.shape[0]} filters, shared by every position"))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 5.2), squeeze=False)
    for ax, (image, label, title) in zip(axes[0], panels):
        _show(plt, fig, ax, image, title, label)
    fig.suptitle(f"{DATASETS[name].title}\nLocally connected: the channel whose filters changed most; white: "
                 "unchanged. Global max pooling passes each image's gradient\nto one position per channel (the "
                 "largest response), so each position's filter learns only from the images it wins.", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_figures(results: list[Result], models: dict, output: Path) -> list[Path]:
    """Write the figures into ``output`` (created if needed) and return their paths."""
    plt = _pyplot()
    output.mkdir(parents=True, exist_ok=True)
    datasets = list(dict.fromkeys(r.dataset for r in results))
    paths = [_accuracy_vs_parameters(plt, results, datasets, output / "accuracy_vs_parameters.png"),
             _accuracy_vs_shift(plt, results, datasets, output / "accuracy_vs_shift.png")]
    paths += [p for name in datasets if (p := _filters(plt, models, name, output / f"filters_{name}.png"))]
    return paths
