"""The ``unshared`` command line: ``unshared demo``, ``unshared params`` and ``unshared info``."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
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
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers like 63 or 63,63 or 63x63, got {text!r}")
    return values


def _padding(text: str):
    return text if text in ("same", "valid") else _ints(text)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _single(values):
    return values[0] if isinstance(values, tuple) and len(values) == 1 else values


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default (``3`` rather than ``(3,)``) unless its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        default = action.default
        if isinstance(default, tuple):
            default = "x".join(map(str, default))
        return f"{text} (default: {'off' if default is False else default})"


class _Given(argparse.Action):
    """Stores the value (``const`` for a flag) and records that the option was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.given = [*getattr(namespace, "given", []), option_string]


def _add_command(commands, name: str, run, **kwargs) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` (``kwargs``: ``help``, ``description``, ...), with the
    shared help formatter; after parsing, ``args.run(args)`` runs it and ``args.parser`` reports its errors."""
    parser = commands.add_parser(name, formatter_class=_Formatter, **kwargs)
    parser.set_defaults(run=run, parser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unshared", description="Locally connected layers for PyTorch.",
                                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"unshared {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = _add_command(
        sub, "demo", _demo,
        help="train small networks that differ only in their middle layer; test them on shifted images",
        description="Train networks whose middle layer is fully connected, locally connected, tiled, "
                    "low-rank or a convolution (then ReLU, global max pooling and a linear classifier) on "
                    "images that ship with scikit-learn (digits) and scikit-image (faces vs non-faces), on "
                    "the aligned images and on randomly shifted ones; test each on the aligned test images "
                    "and on the same images shifted by 1 to 3 pixels. Prints a table, writes results.json "
                    "and PNG figures. Needs: pip install 'unshared[demo]'.")
    d.add_argument("--dataset", choices=["all", "digits", "faces"], default="all", help="which images")
    d.add_argument("--quick", action="store_true", help="a few epochs and one seed (about 10 s)")
    d.add_argument("--seeds", type=_positive, metavar="N", help="seeds per layer and training (default: 3, 1 with --quick)")
    d.add_argument("--epochs", type=_positive, metavar="N", help="epochs for every dataset (default: each dataset's own)")
    d.add_argument("--threads", type=_positive, default=1, metavar="N",
                   help="PyTorch threads (small networks: more threads only help on idle cores)")
    d.add_argument("--output", type=Path, default=Path("unshared-demo"), metavar="DIR",
                   help="folder for results.json and the figures (created if needed)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = _add_command(
        sub, "params", _params,
        help="parameters, multiply-adds and memory from fully connected to convolution",
        description="Compare the fully connected, locally connected, partially shared, low-rank and "
                    "convolutional versions of one layer. Biases are left out unless --bias is given. "
                    "Without --input-size, prints the source material's worked examples (and takes no "
                    "other option).",
        epilog="example: unshared params --input-size 63x63 --in-channels 16 --out-channels 16 "
               "--kernel-size 9 --tile-size 5 --rank 4")
    p.add_argument("--input-size", type=_ints, action=_Given, metavar="SIZE",
                   help="spatial input size, e.g. 63x63, 1 to 3 numbers (default: none, prints the source's examples)")
    p.add_argument("--in-channels", type=_positive, default=1, action=_Given, metavar="N", help="input channels")
    p.add_argument("--out-channels", type=_positive, default=1, action=_Given, metavar="N", help="output channels")
    p.add_argument("--kernel-size", type=_ints, default=(3,), action=_Given, metavar="K", help="e.g. 9 or 9x9")
    p.add_argument("--stride", type=_ints, default=(1,), action=_Given, metavar="S", help="e.g. 2 or 2x1")
    p.add_argument("--padding", type=_padding, default=(0,), action=_Given, metavar="P",
                   help="int(s), 'same' or 'valid'")
    p.add_argument("--dilation", type=_ints, default=(1,), action=_Given, metavar="D", help="e.g. 2")
    p.add_argument("--groups", type=_positive, default=1, action=_Given, metavar="G", help="as nn.Conv's groups")
    p.add_argument("--bias", nargs=0, const=True, default=False, action=_Given,
                   help="count biases too (a layer built with bias=True has them)")
    p.add_argument("--tile-size", type=_ints, action=_Given, metavar="T", help="add a tiled-sharing row (default: no row)")
    p.add_argument("--regions", type=_ints, action=_Given, metavar="R", help="add a region-sharing row (default: no row)")
    p.add_argument("--rank", type=_positive, action=_Given, metavar="R", help="add a low-rank row (default: no row)")
    p.add_argument("--bytes-per-element", type=_positive, default=4, action=_Given, metavar="B",
                   help="for the memory columns (4: float32)")

    i = _add_command(
        sub, "info", _info,
        help="versions, backends, the compiled CPU kernels and their instruction set, threads, GPU",
        description="Print the versions of unshared, PyTorch, Python and Triton; for each backend, whether "
                    "it can run here and why not; whether the compiled CPU kernels loaded (with the "
                    "compiler's error when they were not built), the instruction set they use and why; the "
                    "number of threads; the GPU and its compute capability. The first thing to run when "
                    "something is slow.")
    i.add_argument("--json", action="store_true", help="print it as JSON")
    return parser


def _info(args) -> int:
    from . import info

    return info.main(as_json=args.json)


def _demo(args) -> int:
    from . import demo

    start = time.perf_counter()
    datasets = ("digits", "faces") if args.dataset == "all" else (args.dataset,)
    seeds = args.seeds or (1 if args.quick else 3)
    print(f"unshared demo on {demo.machine(args.threads)}", flush=True)
    try:
        results, models = demo.run_demo(datasets, seeds, args.epochs, args.quick, not args.no_progress,
                                        threads=args.threads)
        print(demo.format_results(results))
        args.output.mkdir(parents=True, exist_ok=True)
        paths = [demo.write_results(results, args.output / "results.json")]
        paths += demo.save_figures(results, models, args.output)
    except demo.MissingExtra as error:
        print(f"unshared demo: {error}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(p.name for p in paths)} to {args.output.resolve()}")
    print(f"took {time.perf_counter() - start:.0f} s")
    return 0


def _params(args) -> int:
    if args.input_size is None:
        ignored = getattr(args, "given", [])
        if ignored:
            args.parser.error(f"{', '.join(ignored)} would be ignored without --input-size "
                              "(without it, params prints the source material's examples)")
        print(_seed_report())
        return 0
    padding = args.padding if isinstance(args.padding, str) else _single(args.padding)
    try:
        rows = layer_costs(
            args.input_size, args.in_channels, args.out_channels, _single(args.kernel_size),
            _single(args.stride), padding, _single(args.dilation), args.groups, args.bias,
            tile_size=_single(args.tile_size), regions=_single(args.regions), rank=args.rank,
            bytes_per_element=args.bytes_per_element)
    except (ValueError, TypeError) as error:
        args.parser.error(str(error))
    print(f"{len(args.input_size)}d layer: input {args.in_channels} x {'x'.join(map(str, args.input_size))}, "
          f"{args.out_channels} output channels{'' if args.bias else ', biases left out (--bias counts them)'}")
    print(format_table(rows))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
