"""Time of All-TNN's spatial smoothness loss (issue 38), on the CPU.

The loss over all six locally connected layers of ``unshared.models.AllTNN`` (150x150 inputs,
107,061,896 parameters), with its gradient, three ways, interleaved in one process::

    python benchmarks/topography.py                 # prints the table
    python benchmarks/topography.py --threads 1 2 --output   # one table per thread count, written to
                                                             # benchmarks/results/topography-cpu-DATE.md

- ``unshared``: ``net.spatial_loss(1.0)`` (:func:`unshared.topography.smoothness_loss` per layer);
- ``hand-written``: the loss as a user writes it from All-TNN's TensorFlow code: ``reshape`` the
  weight (``view`` fails on the kernel-major weight), permute the bias to meet it, build the sheet
  with ``permute``/``reshape``, concatenate, ``F.normalize``, products of shifted slices with the
  wrapped row and column concatenated, one layer after another in a Python loop;
- ``AllTNN step``: one forward and backward of the model at batch 4 (cross-entropy), the cost the
  loss is compared with.

Modes: ``forward`` (the loss alone) and ``forward+backward`` (``loss.backward()`` into fresh
gradients: every sample starts with ``param.grad = None``, as after ``zero_grad()``). Each sample
times one call; samples rotate over the providers (the order shifts each round), after
``--warmup`` rounds; the table gives medians and interquartile ranges in milliseconds, and the
ratio to the model's step. Both losses are checked to agree before timing.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src")]  # unshared from the checkout if not installed

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import unshared  # noqa: E402
from unshared.models import AllTNN  # noqa: E402
from unshared.topography import default_channel_grid  # noqa: E402

BATCH, CLASSES = 4, 565   # ecoset's 565 classes, as All-TNN trains


def hand_written_loss(net: AllTNN) -> torch.Tensor:
    """All-TNN's circular 4-neighbour loss summed over the layers, written with tensor reshapes."""
    total = 0.0
    for layer in net.layers:
        H, W, C = layer.weight.shape[:3]
        a, b = default_channel_grid(C)
        w = layer.weight.reshape(H, W, C, -1)                       # a copy: the weight is kernel-major
        x = torch.cat([w, layer.bias.permute(1, 2, 0).unsqueeze(-1)], dim=-1)   # (H, W, C, F)
        x = x.reshape(H, W, a, b, -1).permute(0, 2, 1, 3, 4).reshape(H * a, W * b, -1)
        x = F.normalize(x, dim=-1)
        bottom = torch.cat([x[:-1] * x[1:], x[-1:] * x[:1]], dim=0).sum(-1)
        right = torch.cat([x[:, :-1] * x[:, 1:], x[:, -1:] * x[:, :1]], dim=1).sum(-1)
        total = total + (1 - (bottom.mean() + right.mean()) / 2) / 2
    return total


def clear_grads(net) -> None:
    for p in net.parameters():
        p.grad = None


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{name}, {os.cpu_count()} cores"


def measure(cases: dict, net: AllTNN, rounds: int, warmup: int) -> dict:
    """Milliseconds per call of each case: samples rotate over the cases, the order shifting each round."""
    samples = {key: [] for key in cases}
    keys = list(cases)
    for round_ in range(warmup + rounds):
        for key in keys[round_ % len(keys):] + keys[:round_ % len(keys)]:
            clear_grads(net)
            start = time.perf_counter()
            cases[key]()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                samples[key].append(elapsed * 1e3)
    clear_grads(net)
    return samples


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9, help="timed samples per provider and mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                   help="torch.set_num_threads values, one table each (default: PyTorch's)")
    p.add_argument("--output", type=Path, nargs="?", default=None,
                   const=HERE / "results" / f"topography-cpu-{datetime.date.today().isoformat()}.md",
                   help="write the markdown tables there (alone: benchmarks/results/topography-cpu-DATE.md)")
    args = p.parse_args(argv)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    torch.manual_seed(0)
    net = AllTNN(CLASSES)
    x, y = torch.randn(BATCH, 3, 150, 150), torch.randint(CLASSES, (BATCH,))
    with torch.no_grad():
        torch.testing.assert_close(net.spatial_loss(1.0), hand_written_loss(net), rtol=1e-4, atol=1e-5)
    cases = {
        ("unshared", "forward"): lambda: net.spatial_loss(1.0),
        ("unshared", "forward+backward"): lambda: net.spatial_loss(1.0).backward(),
        ("hand-written", "forward"): lambda: hand_written_loss(net),
        ("hand-written", "forward+backward"): lambda: hand_written_loss(net).backward(),
        ("AllTNN step, batch 4", "forward+backward"): lambda: F.cross_entropy(net(x), y).backward(),
    }
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *(argv or sys.argv[1:])])
    lines = [
        "# All-TNN's smoothness loss (cpu)", "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine()}; load average at start: {load}",
        f"- versions: torch {torch.__version__}, unshared {unshared.__version__}, Python {platform.python_version()}",
        f"- model: unshared.models.AllTNN({CLASSES}), 150x150 inputs, float32; the loss over all six layers "
        f"(circular, 4 neighbours, per-position biases)",
        f"- samples: {args.rounds} per row after {args.warmup} warm-up rounds, providers interleaved",
        f"- command: `{command}`",
    ]
    for threads in args.threads:
        torch.set_num_threads(threads)
        samples = measure(cases, net, args.rounds, args.warmup)
        step = statistics.median(samples[("AllTNN step, batch 4", "forward+backward")])
        lines += ["", f"torch.set_num_threads({threads}); load average after: "
                  + " ".join(f"{v:.2f}" for v in os.getloadavg()), "",
                  "| provider | mode | median ms | IQR ms | / AllTNN step |", "|---|---|---|---|---|"]
        for (provider, mode), times in samples.items():
            q1, _, q3 = statistics.quantiles(times, n=4)
            median = statistics.median(times)
            lines.append(f"| {provider} | {mode} | {median:.1f} | {q1:.1f}-{q3:.1f} | {median / step:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return text


if __name__ == "__main__":
    main()
