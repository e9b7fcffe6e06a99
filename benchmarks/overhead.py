"""Host time of tiny layers (issue 16): per call, what the Python around a small layer costs.

Tiny 1d/2d/3d locally connected layers (4 -> 4 channels, kernel 3, bias, batch 2) against
``nn.Conv1d/2d/3d`` of the same sizes and the recipe people copy, ``unfold`` + ``einsum`` (plus
the per-position bias), on one thread, from a checkout::

    python benchmarks/overhead.py                  # CPU (and CUDA when present)
    python benchmarks/overhead.py --device cpu --output /tmp/overhead.md

Modes: ``forward`` (a layer call with its parameters requiring gradients, as in training) and
``forward+backward`` (``y.backward(grad_output)``, gradients of the input and the parameters).
Providers run interleaved in one process: each sample times ``--calls`` consecutive calls, samples
rotate over the providers, and the table gives the median per call (CUDA: synchronised after each
sample) and the ratio to ``nn.Conv``'s. Writes ``benchmarks/results/overhead-<device>-<date>.md``
unless ``--output`` says otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src")]  # unshared from the checkout if not installed

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import unshared  # noqa: E402

CHANNELS, KERNEL, BATCH = 4, 3, 2
INPUT_SIZE = {1: 10, 2: 6, 3: 5}
MODES = ("forward", "forward+backward")


def unfold_einsum(layer):
    """The unfold + einsum recipe with ``layer``'s weight and bias (``F.unfold`` in 2d, ``Tensor.unfold``
    per dimension in 1d and 3d)."""
    nd, positions = layer._nd, math.prod(layer.weight.shape[:layer._nd])
    grid = tuple(layer.weight.shape[:nd])
    w = layer.weight.detach().reshape(positions, CHANNELS, -1).clone().requires_grad_()  # (L, O, C*K)
    b = layer.bias.detach().reshape(CHANNELS, positions).clone().requires_grad_()

    def forward(x):
        if nd == 2:
            cols = F.unfold(x, KERNEL)
        else:
            t = x
            for d in range(nd):
                t = t.unfold(2 + d, KERNEL, 1)                       # (N, C, *grid, *kernel)
            t = t.permute(0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))
            cols = t.reshape(x.shape[0], -1, positions)              # (N, C*K, L)
        return (torch.einsum("ncl,loc->nol", cols, w) + b).view(x.shape[0], CHANNELS, *grid)

    return forward


def providers(nd: int, device: str) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(0)
    size = INPUT_SIZE[nd]
    layer = getattr(unshared, f"LocallyConnected{nd}d")(CHANNELS, CHANNELS, KERNEL, input_size=size, device=device)
    conv = getattr(nn, f"Conv{nd}d")(CHANNELS, CHANNELS, KERNEL, device=device)
    x = torch.randn(BATCH, CHANNELS, *(size,) * nd, device=device)
    found = {"unshared": layer, f"nn.Conv{nd}d": conv, "unfold+einsum": unfold_einsum(layer)}
    torch.testing.assert_close(found["unfold+einsum"](x), layer(x), rtol=1e-4, atol=1e-4)  # the same layer
    return found, x


def steps(forward, x: torch.Tensor) -> dict:
    xg = x.clone().requires_grad_()
    grad_output = torch.randn_like(forward(x))
    return {"forward": lambda: forward(x), "forward+backward": lambda: forward(xg).backward(grad_output)}


def per_call_us(fns: dict, device: str, calls: int, samples: int, warmup: int) -> dict:
    """Median microseconds per call of each function, samples interleaved over the functions."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(samples):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: (statistics.median(t), *statistics.quantiles(t, n=4, method="inclusive")[::2])
            for name, t in times.items()}


def header(device: str, date: str) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    gpu = f", {torch.cuda.get_device_name()}" if device == "cuda" else ""
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"# Host time of tiny layers ({device})\n\n"
            f"- date: {date}\n- machine: {cpu}{gpu}, {os.cpu_count()} cores; load average at start: {load}\n"
            f"- versions: torch {torch.__version__}, unshared {unshared.__version__}, Python "
            f"{platform.python_version()}\n"
            f"- layers: {CHANNELS} -> {CHANNELS} channels, kernel {KERNEL}, bias, batch {BATCH}, input size "
            f"{', '.join(f'{nd}d {s}' for nd, s in INPUT_SIZE.items())}; torch.set_num_threads(1)\n"
            f"- command: `python benchmarks/overhead.py {' '.join(sys.argv[1:])}`\n")


def table(device: str, calls: int, samples: int, warmup: int) -> str:
    lines = ["| layer | mode | provider | median us/call | IQR us | / nn.Conv |", "|---|---|---|---|---|---|"]
    for nd in INPUT_SIZE:
        found, x = providers(nd, device)
        for mode in MODES:
            fns = {name: steps(forward, x)[mode] for name, forward in found.items()}
            result = per_call_us(fns, device, calls, samples, warmup)
            conv = result[f"nn.Conv{nd}d"][0]
            for name, (median, q1, q3) in result.items():
                lines.append(f"| {nd}d | {mode} | {name} | {median:.1f} | {q1:.1f}-{q3:.1f} | {median / conv:.2f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="all: the CPU, and CUDA when present (default)")
    parser.add_argument("--calls", type=int, default=200, help="calls per timed sample (default 200)")
    parser.add_argument("--samples", type=int, default=15, help="timed samples per provider (default 15)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed calls per provider first (default 100)")
    parser.add_argument("--output", type=Path, help="the report's path (one device; default: "
                        "benchmarks/results/overhead-<device>-<date>.md per device)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        raise SystemExit("overhead.py: --device cuda needs a CUDA device")
    if args.output is not None and len(devices) > 1:
        raise SystemExit("overhead.py: --output names one report: give --device cpu or cuda")
    torch.set_num_threads(1)
    date = datetime.date.today().isoformat()
    for device in devices:
        text = header(device, date) + "\n" + table(device, args.calls, args.samples, args.warmup)
        print(text)
        output = args.output or HERE / "results" / f"overhead-{device}-{date}.md"
        output.write_text(text)
        print(f"written to {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
