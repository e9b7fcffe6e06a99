"""Training step of ``unshared.SparselyConnected`` at genomics scale (GenNet's SNP -> gene layer)
against the recipe users write, ``x[:, idx] * w`` then ``index_add``, on the CPU.

    python benchmarks/sparse.py                     # the cases of issue 40, writes results/sparse.md
    python benchmarks/sparse.py --quick             # two reduced cases, a check that it runs

A step: forward, then backward with a given output gradient (input and weight gradients). The
providers run interleaved in one process (each round calls every provider once, so a machine that
gets busier slows all of them alike); medians and quartiles over the rounds. Peak memory: the
harness's resident-set high-water mark of one step (outputs and gradients count, the inputs and
weights that exist before do not). The floor is the harness's: max(multiply-adds / FMA peak,
bytes a step must move / copy bandwidth), both measured here by :mod:`harness.devices`, with the
harness's count of a training step's bytes (activations twice, weights three times).

The connectivity is GenNet's: SNPs grouped into genes of consecutive SNPs (``in / out`` on
average), and a share of the SNPs also connected to the next gene (each input feeds 1-3 outputs).
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
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]

import torch
from harness.devices import CpuDevice, bandwidth, busy_cores, cpu_model
from harness.measure import log, rss_peak_transient_bytes

import unshared
from unshared.sparse import SparselyConnected, sparsely_connected

# (in_features, out_features, batch, channels)
CASES = [(100_000, 10_000, 32, 1), (100_000, 10_000, 256, 1), (100_000, 10_000, 32, 4), (200_000, 20_000, 64, 1),
         (1_000_000, 50_000, 32, 1), (1_000_000, 50_000, 256, 1), (1_000_000, 50_000, 32, 4)]
QUICK = [(200_000, 20_000, 64, 1), (100_000, 10_000, 32, 4)]


def connectivity(in_features: int, out_features: int, overlap: float, seed: int) -> torch.Tensor:
    """Genes of consecutive SNPs; a share ``overlap`` of SNPs (up to 2 more genes each) in neighbours."""
    g = torch.Generator().manual_seed(seed)
    gene = torch.sort(torch.randint(0, out_features, (in_features,), generator=g)).values
    pairs = [torch.stack([torch.arange(in_features), gene])]
    for step in (1, 2):
        extra = (torch.rand(in_features, generator=g) < overlap / step).nonzero().squeeze(1)
        pairs.append(torch.stack([extra, (gene[extra] + step).clamp(max=out_features - 1)]))
    return torch.unique(torch.cat(pairs, 1), dim=1)


def providers(layer: SparselyConnected, x: torch.Tensor, gy: torch.Tensor) -> dict:
    """name -> a training step (forward + backward), each returning its gradients."""
    src, dst = layer.connectivity
    w = layer.weight.detach().clone().requires_grad_()
    out = layer.out_features

    def step(forward):
        def run():
            xg = x.detach().requires_grad_()
            y = forward(xg)
            return torch.autograd.grad(y, (xg, w), gy)
        return run

    def recipe(xg):  # what users write: gather one input per connection, then scatter-add
        if w.shape[1] * w.shape[2] == 1:
            part = xg[:, 0, src] * w[:, 0, 0]
            return torch.zeros(x.shape[0], out).index_add(1, dst, part).unsqueeze(1)
        # channels by a broadcast product (an einsum here runs as a batched matmul of tiny
        # matrices, whose backward takes minutes at these sizes)
        part = (xg[:, :, src].unsqueeze(1) * w.permute(1, 2, 0)).sum(2)
        return torch.zeros(x.shape[0], w.shape[1], out).index_add(2, dst, part)

    return {
        "unshared (auto)": step(lambda xg: sparsely_connected(xg, w, layer.connectivity, None, out)),
        "unshared (torch)": step(lambda xg: sparsely_connected(xg, w, layer.connectivity, None, out, backend="torch")),
        "x[:, idx] * w + index_add": step(recipe),
    }


def floor_seconds(n, c, o, n_in, n_out, nnz, peak_gflops, gbps, itemsize=4) -> float:
    flops = 3 * 2 * n * nnz * o * c
    moved = itemsize * (2 * (n * c * n_in + n * o * n_out) + 3 * nnz * o * c)
    return max(flops / (peak_gflops * 1e9), moved / (gbps * 1e9))


def interleaved(steps: dict, rounds: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="two reduced cases, 5 rounds")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--overlap", type=float, default=0.2, help="share of SNPs also in the next gene")
    p.add_argument("--max-gib", type=float, default=6.0, help="skip cases whose recipe would need more memory")
    p.add_argument("--output", type=Path, default=HERE / "results" / "sparse.md")
    args = p.parse_args(argv)
    cases, rounds = (QUICK, 5) if args.quick else (CASES, args.rounds)
    device = CpuDevice()
    busy = busy_cores(0.5)
    peak, peak_how = device.fma_peak([torch.float32], 3)
    gbps = bandwidth(device, 12)
    peak32 = peak.get(torch.float32, float("inf"))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# SparselyConnected training step vs `x[:, idx] * w` + `index_add` ({'quick' if args.quick else 'full'})",
             "", f"- date: {date}", *device.describe(busy),
             f"- torch {torch.__version__}, unshared {unshared.__version__}, python {platform.python_version()}",
             (f"- floor: FMA peak {peak32:.0f} GFLOP/s float32 ({peak_how or 'not measured'}); copy bandwidth "
             f"{gbps:.1f} GB/s (best of 12 copies of {device.copy_mib} MiB)"),
             f"- command: `python benchmarks/sparse.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
             (f"- {rounds} interleaved rounds per case, median (quartiles) in ms; float32; peak: the step's "
             "resident-set high-water mark"), "",
             "| case | nnz | provider | median ms | q1-q3 | x floor | speed-up vs recipe | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for n_in, n_out, n, ch in cases:
        recipe_bytes = 4 * n * ch * (3 * n_in * 2 + 2 * n_in * ch)  # x, gx, the gathered copies
        if recipe_bytes > args.max_gib * 2 ** 30:
            log(f"skipped {n_in}->{n_out} batch {n} {ch}ch: about {recipe_bytes / 2**30:.1f} GiB > --max-gib")
            lines.append(f"| {n_in:,} -> {n_out:,}, batch {n}, {ch}->{ch}ch | | skipped (> {args.max_gib} GiB) | | | | | |")
            continue
        torch.manual_seed(0)
        pairs = connectivity(n_in, n_out, args.overlap, seed=n_in + n_out)
        layer = SparselyConnected(n_in, n_out, pairs, in_channels=ch, out_channels=ch)
        x, gy = torch.randn(n, ch, n_in), torch.randn(n, ch, n_out)
        steps = providers(layer, x, gy)
        got = {name: fn() for name, fn in steps.items()}
        first = next(iter(got.values()))
        for name, grads in got.items():
            for a, b in zip(grads, first):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=f"{name} disagrees")
        del got, first
        times = interleaved(steps, rounds)
        floor = floor_seconds(n, ch, ch, n_in, n_out, layer.nnz, peak32, gbps)
        recipe = statistics.median(times["x[:, idx] * w + index_add"])
        label = f"{n_in:,} -> {n_out:,}, batch {n}, {ch}->{ch}ch"
        for name, fn in steps.items():
            q1, med, q3 = statistics.quantiles(times[name], n=4, method="inclusive")
            memory = rss_peak_transient_bytes(fn)
            mib = "?" if memory is None else f"{memory / 2**20:.0f}"
            lines.append(f"| {label} | {layer.nnz:,} | {name} | {med * 1e3:.1f} | {q1 * 1e3:.1f}-{q3 * 1e3:.1f} | "
                         f"{med / floor:.1f} | {recipe / med:.2f} | {mib} |")
            log(lines[-1])
        write(args.output, lines)  # after every case: a run cut short keeps what it measured
    lines += ["", (f"Threads: `torch.get_num_threads()` = {torch.get_num_threads()} on {os.cpu_count()} cores "
              f"({cpu_model()}, {platform.machine()}).")]
    write(args.output, lines)
    print("\n".join(lines))


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
