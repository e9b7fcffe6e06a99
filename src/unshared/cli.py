"""The ``unshared`` command line: ``unshared demo``, ``unshared params``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .costs import format_table, layer_costs

# The source material's worked examples: (title, layer_costs arguments, {row name: expected parameters})
SEED_EXAMPLES = [
    ("1000x1000 image, 10^6 hidden units (one per pixel), 10x10 filters",
     dict(input_size=(1000, 1000), in_channels=1, out_channels=1, kernel_size=10, padding="same"),
     {"fully connected": 10**12, "locally connected": 10**8, "convolution": 100}),
    ("256 filters of 5x5 on a 128x128 image",
     dict(input_size=(128, 128), in_channels=1, out_channels=256, kernel_size=5),
     {"locally connected": 5 * 5 * 256 * 124 * 124, "convolution": 5 * 5 * 256}),
    ("3x3 image, 16 hidden units in 4 groups of 4 (4 channels on a 2x2 grid), 2x2 windows",
     dict(input_size=(3, 3), in_channels=1, out_channels=4, kernel_size=2),
     {"fully connected": 144, "convolution": 16}),
]


def _seed_report() -> str:
    parts = []
    for title, kwargs, expected in SEED_EXAMPLES:
        rows = layer_costs(**kwargs)
        counts = {r.name: r.parameters for r in rows}
        checks = ", ".join(f"{name} {value:,} {'ok' if counts[name] == value else 'MISMATCH'}"
                           for name, value in expected.items())
        parts.append(f"{title}\n{format_table(rows)}\nsource figures: {checks}")
    # the middle step of the 3x3 example: sharing within each group, no locality yet (each unit sees all 9 pixels)
    shared = layer_costs((3, 3), 1, 4, 3)[-1].parameters
    parts[-1] += f"\nsharing within groups before locality (3x3 windows): {shared} parameters " \
                 f"({'ok' if shared == 36 else 'MISMATCH'}: source figure 36)"
    return "\n\n".join(parts)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 63 or 63,63 or 63x63, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers like 63 or 63,63 or 63x63, got {text!r}")
    return values


def _padding(text: str):
    return text if text in ("same", "valid") else _ints(text)


def _single(values):
    return values[0] if values is not None and len(values) == 1 else values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unshared", description="Locally connected layers for PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser(
        "params", help="parameters, multiply-adds and memory from fully connected to convolution",
        description="Compare the fully connected, locally connected, partially shared, low-rank and "
                    "convolutional versions of one layer. Without --input-size, prints the source "
                    "material's worked examples.",
        epilog="example: unshared params --input-size 63x63 --in-channels 16 --out-channels 16 "
               "--kernel-size 9 --tile-size 5 --rank 4")
    p.add_argument("--input-size", type=_ints, help="spatial input size, e.g. 63x63 (1 to 3 numbers)")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--out-channels", type=int, default=1)
    p.add_argument("--kernel-size", type=_ints, default=(3,))
    p.add_argument("--stride", type=_ints, default=(1,))
    p.add_argument("--padding", type=_padding, default=(0,), help="int(s), 'same' or 'valid'")
    p.add_argument("--dilation", type=_ints, default=(1,))
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--bias", action="store_true", help="count biases too")
    p.add_argument("--tile-size", type=_ints, help="add a tiled-sharing row")
    p.add_argument("--regions", type=_ints, help="add a region-sharing row")
    p.add_argument("--rank", type=int, help="add a low-rank row")
    p.add_argument("--bytes-per-element", type=int, default=4)

    d = sub.add_parser(
        "demo", help="train small networks that differ only in their middle layer, on real images",
        description="Train networks whose middle layer is fully connected, locally connected, tiled, "
                    "low-rank or a convolution on images that ship with scikit-learn (digits) and "
                    "scikit-image (faces vs non-faces); print a table and write PNG figures. "
                    "Needs: pip install 'unshared[demo]'.")
    d.add_argument("--dataset", choices=["all", "digits", "faces"], default="all")
    d.add_argument("--quick", action="store_true", help="a few epochs and one seed (under 30 s)")
    d.add_argument("--seeds", type=_positive, help="seeds per layer (default 3, 1 with --quick)")
    d.add_argument("--epochs", type=_positive, help="override the epochs of each dataset")
    d.add_argument("--output", type=Path, default=Path("unshared-demo"), help="folder for the figures")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _demo(args, parser) -> int:
    from . import demo

    datasets = ("digits", "faces") if args.dataset == "all" else (args.dataset,)
    seeds = args.seeds or (1 if args.quick else 3)
    try:
        results, models = demo.run_demo(datasets, seeds, args.epochs, args.quick, not args.no_progress)
        print(demo.format_results(results))
        paths = demo.save_figures(results, models, args.output)
    except demo.MissingExtra as error:
        print(f"unshared demo: {error}", file=sys.stderr)
        return 1
    print("figures: " + ", ".join(str(p) for p in paths))
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args, parser)
    if args.command == "params":
        if args.input_size is None:
            print(_seed_report())
            return 0
        nd = len(args.input_size)
        try:
            rows = layer_costs(
                args.input_size, args.in_channels, args.out_channels, _single(args.kernel_size),
                _single(args.stride), args.padding if isinstance(args.padding, str) else _single(args.padding),
                _single(args.dilation), args.groups, args.bias, tile_size=_single(args.tile_size),
                regions=_single(args.regions), rank=args.rank, bytes_per_element=args.bytes_per_element)
        except (ValueError, TypeError) as error:
            parser.error(str(error))
        print(f"{nd}d layer: input {args.in_channels} x {'x'.join(map(str, args.input_size))}, "
              f"{args.out_channels} output channels")
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
