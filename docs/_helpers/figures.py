"""Figures drawn while the site builds: matplotlib figures as inline SVG (no image files to keep
in step), and the home page's picture of the spectrum."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                     "axes.spines.right": False, "svg.hashsalt": "unshared"})


def svg(fig, alt: str) -> str:
    """The figure as an inline ``<svg>`` in a ``<figure>``, and closed."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    return (f'<figure class="unshared-figure" role="img" aria-label="{alt}">\n{text}\n'
            f"<figcaption>{alt}</figcaption></figure>\n")


def spectrum(inputs: int = 7, kernel: int = 3) -> str:
    """Fully connected, locally connected, convolution: a 1-d input, one channel, the layer's
    connections coloured by the weight they use (one colour, one parameter)."""
    from unshared import layer_costs

    outputs = inputs - kernel + 1
    counts = {r.name: r.parameters for r in layer_costs(input_size=(inputs,), in_channels=1, out_channels=1,
                                                        kernel_size=kernel)}
    panels = [("fully connected", "whole input", False), ("locally connected", "local window", False),
              ("convolution", "local window", True)]
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.0), layout="constrained")
    cmap = plt.get_cmap("tab20")
    for ax, (name, field, shared) in zip(axes, panels):
        xi = [i - (inputs - 1) / 2 for i in range(inputs)]
        xo = [o - (outputs - 1) / 2 for o in range(outputs)]
        weight = 0
        for o in range(outputs):
            window = range(inputs) if name == "fully connected" else range(o, o + kernel)
            for k, i in enumerate(window):
                colour = cmap((k if shared else weight) % 20)
                ax.plot([xi[i], xo[o]], [0, 1], color=colour, lw=1.6)
                weight += 1
        ax.scatter(xi, [0] * inputs, s=60, color="0.3", zorder=3)
        ax.scatter(xo, [1] * outputs, s=60, color="0.1", zorder=3)
        ax.set_title(f"{name}\n{counts[name]} weights ({field}, "
                     f"{'shared' if shared else 'one per connection'})", fontsize=9)
        ax.set_xlim(-inputs / 2, inputs / 2)
        ax.set_ylim(-0.25, 1.2)
        ax.axis("off")
    axes[0].text(-inputs / 2, 0, "input", va="center", ha="left", fontsize=8)
    axes[0].text(-inputs / 2, 1, "output", va="center", ha="left", fontsize=8)
    return svg(fig, f"A {inputs}-pixel input, {outputs} output units, windows of {kernel}: one colour per "
                    f"weight. From left to right the layer first drops the far connections, then shares "
                    f"the remaining weights across positions.")
