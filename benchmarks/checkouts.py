"""The same layers timed from two checkouts of unshared, in alternating processes: is a change
slower anywhere? (issue 16's "no slower at large shapes").

    python benchmarks/checkouts.py /path/to/other/checkout               # DeepFace L4-L6 at 8, L4-64, cifar-128
    python benchmarks/checkouts.py ../base --cases L6-8 --rounds 6 --reps 15

The other checkout must have its compiled CPU kernels built in place (``make .venv/test.stamp``
there, or ``python setup.py build_ext --inplace``). Each round runs one worker process per
checkout, the two in turn (this one second in odd rounds, first in even ones), with the same Python
and torch; a worker imports unshared from its checkout's ``src``, builds each case's layer
(``backend="auto"``, the default), and times ``reps`` calls of the forward (no grad) and of a
training step (forward, backward to the input and the parameters) after two warm-up calls. The
table gives, per case and mode, the median over rounds of each round's median, and this checkout's
time over the other's. Timing jobs sharing the cores make both slower: run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CASES = "L4-8,L5-8,L6-8,L4-64,cifar-128"
MODES = ("forward", "forward+backward")


def worker(cases: list[str], reps: int) -> dict[str, float]:
    """Median milliseconds per case and mode, with the unshared that ``sys.path`` finds first."""
    import torch

    import unshared
    from harness.cases import CASES

    torch.manual_seed(0)
    found = {}
    for key in cases:
        case = CASES[key]
        layer = getattr(unshared, f"LocallyConnected{case.nd}d")(
            case.in_channels, case.out_channels, case.kernel_size, stride=case.stride, padding=case.padding,
            input_size=case.input_size)
        x = torch.randn(case.batch, case.in_channels, *case.input_size)
        xg = x.clone().requires_grad_()
        grad_output = torch.randn_like(layer(x))

        def forward():
            with torch.no_grad():
                layer(x)

        def step():
            layer.zero_grad(set_to_none=True)
            xg.grad = None
            layer(xg).backward(grad_output)

        for mode, fn in zip(MODES, (forward, step)):
            for _ in range(2):
                fn()
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            found[f"{key} {mode}"] = statistics.median(times) * 1e3
    return found


def run_worker(checkout: Path, cases: str, reps: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout / "src"), str(HERE)])}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "--cases", cases,
                          "--reps", str(reps)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(this: list[dict], other: list[dict], other_name: str) -> str:
    lines = [f"| case | mode | this checkout ms | {other_name} ms | this / other |", "|---|---|---:|---:|---:|"]
    for name in this[0]:
        ours = statistics.median(r[name] for r in this)
        theirs = statistics.median(r[name] for r in other)
        key, mode = name.split(" ", 1)
        lines.append(f"| {key} | {mode} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", nargs="?", type=Path, help="the other checkout (its root directory)")
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated cases of bench.py (default {DEFAULT_CASES})")
    parser.add_argument("--rounds", type=int, default=4, help="worker processes per checkout (default 4)")
    parser.add_argument("--reps", type=int, default=9, help="timed calls per case and mode in a worker (default 9)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.cases.split(","), args.reps)))
        return
    if args.other is None or not (args.other / "src" / "unshared").is_dir():
        raise SystemExit(f"checkouts.py: {args.other} is not a checkout of unshared (no src/unshared)")
    this_checkout = HERE.parent
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"# {this_checkout} against {args.other.resolve()}: {args.rounds} rounds, {args.reps} reps; "
          f"load average at start {load}; {time.strftime('%Y-%m-%d %H:%M')}\n", flush=True)
    this, other = [], []
    for i in range(args.rounds):
        order = [(other, args.other), (this, this_checkout)]
        for results, checkout in order if i % 2 == 0 else order[::-1]:
            results.append(run_worker(checkout, args.cases, args.reps))
    print(table(this, other, args.other.name))


if __name__ == "__main__":
    main()
