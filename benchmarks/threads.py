"""The fight over the cores (issue 37): the compiled CPU kernels next to PyTorch's own parallel ops.

PyTorch's OpenMP workers keep spinning for a while after each of its parallel ops (a bias add, a
ReLU). Kernels that start threads of their own then share the cores with those spinners. Since
ABI 4 the kernels run on the OpenMP runtime PyTorch loaded (``cpu.thread_pool() == "openmp"``);
``cpu.use_thread_pool("pthreads")`` brings back threads of their own, for comparison. This script
times a training step (forward, then backward of ``y * 0.5``) of layers as users build them, both
pools interleaved in one process::

    python benchmarks/threads.py                                     # every case below
    python benchmarks/threads.py --cases L6-64 --rounds 15 --output /tmp/threads.md

Variants per case: ``no bias``; ``bias`` (the layers' default, per-position bias); ``bias + ReLUs``
(a ReLU before and after the layer, as inside a network). Each sample times ``--calls`` steps;
samples rotate over pools and variants; the table gives medians, and each variant's time over
the no-bias time of the same pool (what the PyTorch ops around the layer cost it). Then the
DeepFace trunk (C1, M2, C3, L4, L5, L6 with ReLUs, batch 8) per pool. Writes
``benchmarks/results/threads-cpu-<date>.md`` unless ``--output`` says otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]  # unshared from the checkout if not installed

import torch  # noqa: E402
from torch import nn  # noqa: E402

import unshared  # noqa: E402
from unshared.backends import cpu  # noqa: E402
from harness.devices import cpu_model  # noqa: E402

#: name -> (in_channels, out_channels, kernel, stride, input_size, batch): the bench cases' shapes
CASES = {
    "genomics-1d-32": (1, 1, 10, 1, (100_000,), 32),
    "L6-64": (16, 16, 5, 1, (25, 25), 64),
    "L5-8": (16, 16, 7, 2, (55, 55), 8),
    "alltnn-1-16": (3, 64, 7, 3, (150, 150), 16),
}
VARIANTS = ("no bias", "bias", "bias + ReLUs")


def _layer(case: str, bias: bool) -> tuple[nn.Module, torch.Tensor]:
    c, o, k, s, size, batch = CASES[case]
    cls = unshared.LocallyConnected1d if len(size) == 1 else unshared.LocallyConnected2d
    torch.manual_seed(0)
    return cls(c, o, k, stride=s, input_size=size, bias=bias), torch.randn(batch, c, *size)


def _step(layer: nn.Module, x: torch.Tensor, relus: bool) -> None:
    y = layer(torch.relu(x) if relus else x)
    if relus:
        y = torch.relu(y)
    y.backward(torch.full_like(y, 0.5))


def _sample(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def _trunk() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = unshared.models.DeepFace(num_classes=10)
    return net.trunk[:11], torch.randn(8, 3, 152, 152)  # C1, M2, C3, L4, L5, L6 and their ReLUs


def run(cases, rounds: int, calls: int) -> list[str]:
    lines = []
    for case in cases:
        layers = {"no bias": _layer(case, False), "bias": _layer(case, True)}
        layers["bias + ReLUs"] = layers["bias"]
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for pool in cpu.THREAD_POOLS:
                with cpu.use_thread_pool(pool):
                    for variant in VARIANTS:
                        layer, x = layers[variant]
                        fn = lambda: _step(layer, x, variant == "bias + ReLUs")  # noqa: E731
                        fn()  # warm-up: the first step after a switch
                        times.setdefault((pool, variant), []).append(_sample(fn, calls))
        for pool in cpu.THREAD_POOLS:
            base = statistics.median(times[(pool, "no bias")])
            for variant in VARIANTS:
                median = statistics.median(times[(pool, variant)])
                lines.append(f"| {case} | {pool} | {variant} | {median:.2f} | {median / base:.2f} |")
        print("\n".join(lines[-2 * len(VARIANTS):]), flush=True)
    return lines


def run_trunk(rounds: int) -> list[str]:
    trunk, x = _trunk()
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for pool in cpu.THREAD_POOLS:
            with cpu.use_thread_pool(pool):
                fn = lambda: (lambda y: y.backward(torch.full_like(y, 0.5)))(trunk(x))  # noqa: E731
                fn()
                times.setdefault(pool, []).append(_sample(fn, 1))
    lines = [f"| DeepFace trunk (8) | {pool} | {statistics.median(t):.1f} |" for pool, t in times.items()]
    print("\n".join(lines), flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--no-trunk", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if not cpu.available_isas():
        sys.exit("the compiled CPU kernels are not built")
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    head = [f"# Thread pools of the CPU kernels ({date})", "",
            f"- command: `python benchmarks/threads.py {' '.join(sys.argv[1:])}`".rstrip(),
            f"- machine: {platform.processor() or platform.machine()} ({cpu_model()}), {os.cpu_count()} cores, "
            f"torch.get_num_threads() = {torch.get_num_threads()}, kernels: {cpu.current_isa()}, "
            f"load average at start {load}",
            f"- versions: python {platform.python_version()}, torch {torch.__version__}",
            f"- medians of {args.rounds} samples of {args.calls} training steps; pools and variants interleaved", "",
            "| case | pool | variant | ms per step | / no bias |", "|---|---|---|---:|---:|"]
    print("\n".join(head), flush=True)
    body = run(args.cases.split(","), args.rounds, args.calls)
    trunk = [] if args.no_trunk else ["", "| network | pool | ms per step |", "|---|---|---:|", *run_trunk(args.rounds)]
    out = args.output or HERE / "results" / f"threads-cpu-{date[:10]}.md"
    out.write_text("\n".join(head + body + trunk) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
