"""Parameter and cost arithmetic along the spectrum from fully connected to convolution.

For one layer described by its input size, channels, kernel, stride and padding,
:func:`layer_costs` gives the parameters, multiply-adds and memory of each version: fully
connected, locally connected, tiled, region-shared, low-rank and convolution. Counts are exactly
what the real modules hold (``sum(p.numel() for p in module.parameters())``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import _utils as U

__all__ = ["LayerCost", "layer_costs", "format_table", "parameter_table"]


@dataclass(frozen=True)
class LayerCost:
    """One version of a layer: ``parameters``; ``macs`` (multiply-adds per sample);
    ``weight_bytes``; ``activation_bytes`` (input + output per sample), at ``bytes_per_element``.

    Example::

        >>> import unshared
        >>> unshared.layer_costs(8, 3, 4, 3, ndim=1)[-1]
        LayerCost(name='convolution', parameters=36, macs=216, weight_bytes=144, activation_bytes=192, note='1 bank')
    """

    name: str
    parameters: int
    macs: int
    weight_bytes: int
    activation_bytes: int
    note: str = ""


def layer_costs(input_size, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                dilation=1, groups: int = 1, bias: bool = False, *, tile_size=None, regions=None,
                rank: int | None = None, combining: str = "position",
                bytes_per_element: int = 4, ndim: int | None = None) -> list[LayerCost]:
    """Costs of every version of one layer, fully connected first, convolution last.

    The fully connected version maps the flattened input to the flattened output (same sizes);
    locally connected has a per-position bias; tiled and region-shared have a bias per filter
    bank; low-rank and convolution one per output channel. Tiled, region and low-rank rows appear
    when ``tile_size``, ``regions`` or ``rank`` is given (low-rank with ``combining`` weights
    ``"position"``: ``rank * prod(output_size)``, or ``"factorized"``: ``rank * sum(output_size)``).

    An int ``input_size`` (like every other int size) is spread over all spatial dimensions, as
    the layers do; their number is ``ndim``, or the length of any tuple among ``kernel_size``,
    ``stride``, ``padding``, ``dilation``, ``tile_size`` and ``regions``, and 1 when all are ints.

    Example (the seeds' 1000x1000 image, 10^6 hidden units, 10x10 filters)::

        >>> import unshared
        >>> for cost in unshared.layer_costs(1009, 1, 1, 10, ndim=2):
        ...     print(f"{cost.name}: {cost.parameters:.0e} parameters, {cost.macs:.0e} multiply-adds")
        fully connected: 1e+12 parameters, 1e+12 multiply-adds
        locally connected: 1e+08 parameters, 1e+08 multiply-adds
        convolution: 1e+02 parameters, 1e+08 multiply-adds
    """
    nd = U.spatial_ndim(ndim, input_size=input_size, kernel_size=kernel_size, stride=stride, padding=padding,
                      dilation=dilation, tile_size=tile_size, regions=regions) or 1
    size = U.ntuple(input_size, nd, "input_size")
    kernel = U.positive(U.ntuple(kernel_size, nd, "kernel_size"), "kernel_size")
    strides = U.positive(U.ntuple(stride, nd, "stride"), "stride")
    dil = U.positive(U.ntuple(dilation, nd, "dilation"), "dilation")
    U.check_groups(in_channels, out_channels, groups)
    out = U.output_size(size, kernel, strides, U.normalize_padding(padding, kernel, strides, dil), dil)
    n_in, positions = in_channels * math.prod(size), math.prod(out)
    n_out = out_channels * positions
    bank = out_channels * U.fan_in(in_channels, groups, kernel)  # weights of one filter bank
    activations = (n_in + n_out) * bytes_per_element

    def row(name, params, macs, note=""):
        return LayerCost(name, params, macs, params * bytes_per_element, activations, note)

    rows = [row("fully connected", n_in * n_out + (n_out if bias else 0), n_in * n_out,
                f"Linear({n_in}, {n_out})"),
            row("locally connected", positions * bank + (n_out if bias else 0), positions * bank,
                f"{positions} positions x {bank} weights")]
    if tile_size is not None:
        tiles = U.positive(U.ntuple(tile_size, nd, "tile_size"), "tile_size")
        banks = math.prod(tiles)
        rows.append(row("tiled", banks * bank + (banks * out_channels if bias else 0), positions * bank,
                        f"{banks} banks, tile {tiles}"))
    if regions is not None:
        grid = U.positive(U.ntuple(regions, nd, "regions"), "regions")
        banks = math.prod(grid)
        rows.append(row("region-shared", banks * bank + (banks * out_channels if bias else 0),
                        positions * bank, f"{banks} banks, regions {grid}"))
    if rank is not None:
        if combining not in ("position", "factorized"):
            raise ValueError(f"combining must be 'position' or 'factorized', got combining={combining!r}")
        mixing = rank * (positions if combining == "position" else sum(out))
        rows.append(row("low-rank", rank * bank + mixing + (out_channels if bias else 0),
                        rank * positions * bank + rank * n_out, f"rank {rank}, {combining} combining"))
    rows.append(row("convolution", bank + (out_channels if bias else 0), positions * bank, "1 bank"))
    return rows


def format_table(rows: list[LayerCost]) -> str:
    """A plain-text table of :func:`layer_costs` rows."""
    head = ("layer", "parameters", "multiply-adds", "weights", "activations", "")
    body = [(r.name, f"{r.parameters:,}", f"{r.macs:,}", _bytes(r.weight_bytes), _bytes(r.activation_bytes),
             r.note) for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i in (0, 5) else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*line).rstrip() for line in [head, *body])


def parameter_table(*models) -> str:
    """A Markdown table of the parameters of each named child of ``models``, side by side.

    One row per child that holds parameters (children of the same name share a row, ``-`` where
    a model has none), then the totals; per model, the child's class and its parameter count.
    """
    counts = [{name: (type(child).__name__, sum(p.numel() for p in child.parameters()))
               for name, child in model.named_children() if any(True for _ in child.parameters())}
              for model in models]
    names = list(dict.fromkeys(name for table in counts for name in table))
    head = ["layer"] + [part for model in models for part in (type(model).__name__, "parameters")]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---|---:" * len(models) + "|"]
    for name in names:
        cells = [cell for table in counts for cell in
                 ((table[name][0], f"{table[name][1]:,}") if name in table else ("-", "-"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [cell for model in models for cell in ("", f"{sum(p.numel() for p in model.parameters()):,}")]
    lines.append("| total | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError
