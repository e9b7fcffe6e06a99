"""DeepFace across processes: the bytes each rank sends per step and the step time under DDP,
FSDP2 and PositionParallel on its locally connected layers (L4-L6), run under torchrun::

    flock /tmp/unshared-timing.lock torchrun --standalone --nproc_per_node=2 benchmarks/distributed.py
    torchrun --standalone --nproc_per_node=2 benchmarks/distributed.py --batch-size 8 --steps 2 --num-classes 10

The three set-ups are ``examples/train_deepface.py``'s (imported from there): DDP and FSDP2 give
each rank its own batch of ``--batch-size`` images; PositionParallel (a 1-d position mesh over
all ranks) gives every rank the same batch, of which each computes its rows of L4-L6. Built once
each, they are timed interleaved, one step of each in turn (a barrier before each step; a step's
time is the slowest rank's), after one warm-up step each. Bytes are counted in one more step per
set-up by :class:`harness.collectives.CollectiveCounter` (every ``c10d`` and functional collective,
charged at the ring algorithm's bytes sent) and attributed to L4-L6 by tensor size: DDP's buckets
through a comm hook that records which parameters each holds, FSDP2's all-gathers and
reduce-scatters by the size of each unit's shards; under PositionParallel nothing but L4-L6
communicates. Rank 0 writes a markdown report (``--output``, by default
``benchmarks/results/distributed-cpu-<date>.md``) with the formula for N ranks.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src"), str(HERE.parent / "examples")]

import argparse  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import train_deepface as example  # noqa: E402
import unshared  # noqa: E402
from harness.collectives import CollectiveCounter, position_parallel_sent  # noqa: E402
from harness.devices import busy_cores, cpu_model  # noqa: E402

ENGINES = ("ddp", "fsdp", "position")
NAMES = {"ddp": "DDP", "fsdp": "FSDP2", "position": "PositionParallel (L4-L6)"}
LC = tuple(example.POSITION_PLAN)          # L4, L5, L6 in DeepFace.trunk


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=64, help="images per rank and step")
    p.add_argument("--steps", type=int, default=5, help="timed steps per set-up")
    p.add_argument("--num-classes", type=int, default=4030)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--output", default=None, help="the report (default: benchmarks/results/distributed-cpu-<date>.md)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------- the set-ups

def lc_parameters(model) -> set[int]:
    return {id(p) for name in LC for p in model.get_submodule(name).parameters()}


class BucketShares:
    """The state of :func:`record_bucket_shares`: for each DDP bucket size, the share of its
    elements that belong to L4-L6."""

    def __init__(self, lc_ids: set[int]) -> None:
        self.lc_ids, self.share = lc_ids, {}


def record_bucket_shares(state: BucketShares, bucket):
    """A DDP comm hook: DDP's default all-reduce, recording what the bucket holds."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    lc = sum(p.numel() for p in bucket.parameters() if id(p) in state.lc_ids)
    state.share[bucket.buffer().numel()] = lc / bucket.buffer().numel()
    return allreduce_hook(None, bucket)


def fsdp_unit_shares(model, world: int) -> dict[int, float]:
    """{numel of an all-gather input or reduce-scatter input: 1 for L4-L6's units, 0 for others}."""
    units = {name: list(model.get_submodule(name).parameters()) for name in LC}
    units.update({"trunk.12": list(model.trunk[12].parameters()), "classifier": list(model.classifier.parameters())})
    taken = {id(p) for ps in units.values() for p in ps}
    units["root"] = [p for p in model.parameters() if id(p) not in taken]
    shares = {}
    for name, params in units.items():
        shard = sum(math.ceil(p.shape[0] / world) * p[0].numel() for p in params)
        for numel in (shard, shard * world):
            if shares.get(numel, name in LC) != (name in LC):
                raise RuntimeError(f"two FSDP units of different kinds have shards of {numel} elements")
            shares[numel] = float(name in LC)
    return shares


def build(engine: str, args, world: int, rank: int):
    """(model, batch, share of each collective's size that is L4-L6's or None for all)."""
    flags = ["--device", "cpu", "--num-classes", str(args.num_classes), "--batch-size", str(args.batch_size)]
    flags += {"ddp": [], "fsdp": ["--fsdp"], "position": ["--position-parallel"]}[engine]
    options = example.parse_args(flags)
    torch.manual_seed(0)
    mesh = example.make_mesh(options, torch.device("cpu"), world)
    model = example.build_model(options, args.num_classes, torch.device("cpu"), mesh)
    shares = None
    if engine == "ddp":
        shares = BucketShares(lc_parameters(model.module))
        model.register_comm_hook(shares, record_bucket_shares)
    elif engine == "fsdp":
        shapes = example.DeepFace(num_classes=args.num_classes, device="meta")
        shares = fsdp_unit_shares(shapes, world)
    data_rank = 0 if engine == "position" else rank     # a position group shares its batch
    batch = next(example.synthetic_batches(options, args.num_classes, torch.device("cpu"), data_rank))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, opt, batch, shares


def step(model, opt, batch) -> None:
    x, y = batch
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def count(model, opt, batch, shares) -> tuple[float, float]:
    """(bytes sent in one step, of which by L4-L6)."""
    with CollectiveCounter() as counter:
        step(model, opt, batch)
    calls = [c for c in counter.calls if c.sent]
    if shares is None:
        return counter.sent(), counter.sent()
    table = shares.share if isinstance(shares, BucketShares) else shares
    unknown = [c for c in calls if c.numel not in table]
    if unknown:
        raise RuntimeError(f"collectives of sizes no parameter group has: {unknown}")
    return counter.sent(), sum(c.sent * table[c.numel] for c in calls)


def slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


# ---------------------------------------------------------------------------------- the formula

def position_parallel_bytes(batch: int, world: int) -> list[float]:
    """Bytes each of ``world`` ranks sends per step under PositionParallel (float32), from the row plans."""
    model = example.DeepFace(num_classes=10, device="meta")
    per_layer = [position_parallel_sent(model.get_submodule(name), "input_layouts" in layouts,
                                        "output_layouts" in layouts, batch, world)
                 for name, layouts in example.POSITION_PLAN.items()]
    return [sum(sent) for sent in zip(*per_layer)]


def weight_bytes(padded_for: int | None = None) -> float:
    """Bytes of L4-L6's parameters (float32), dim 0 padded to a multiple of ``padded_for`` (FSDP2's shards)."""
    model = example.DeepFace(num_classes=10, device="meta")
    w = padded_for or 1
    return 4 * sum(math.ceil(p.shape[0] / w) * w * p[0].numel() for name in LC
                   for p in model.get_submodule(name).parameters())


def formula_table(batch: int) -> list[str]:
    lines = ["| ranks N | DDP: 2(N-1)/N P | FSDP2: 3(N-1)/N P | PositionParallel (max over ranks) | FSDP2 / PositionParallel |",
             "|---:|---:|---:|---:|---:|"]
    for n in (2, 4, 8, 16):
        ddp, fsdp = 2 * (n - 1) / n * weight_bytes(), 3 * (n - 1) / n * weight_bytes(n)
        pp = max(position_parallel_bytes(batch, n))
        lines.append(f"| {n} | {ddp / 1e6:.1f} MB | {fsdp / 1e6:.1f} MB | {pp / 1e6:.2f} MB | {fsdp / pp:.0f} |")
    return lines


# ---------------------------------------------------------------------------------- the run

def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)           # one core per process on a small machine
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    busy = busy_cores() if rank == 0 else None
    engines = args.engines.split(",")
    setups = {e: build(e, args, world, rank) for e in engines}
    sent, times = {}, {e: [] for e in engines}
    for e, (model, opt, batch, shares) in setups.items():
        step(model, opt, batch)                          # warm-up (DDP rebuilds its buckets here)
        sent[e] = count(model, opt, batch, shares)
    for _ in range(args.steps):
        for e, (model, opt, batch, _) in setups.items():
            dist.barrier()
            t0 = time.perf_counter()
            step(model, opt, batch)
            times[e].append(slowest(time.perf_counter() - t0))
    totals = [torch.tensor(sent[e], dtype=torch.float64) for e in engines]
    gathered = [[torch.zeros(2, dtype=torch.float64) for _ in range(world)] for _ in engines]
    for g, t in zip(gathered, totals):
        dist.all_gather(g, t)
    if rank == 0:
        report = write_report(args, argv, world, busy, engines, {e: [t.tolist() for t in g] for e, g in zip(engines, gathered)},
                              times)
        print(report)
    dist.destroy_process_group()


def write_report(args, argv, world, busy, engines, sent, times) -> str:
    date = datetime.date.today().isoformat()
    med = {e: statistics.median(times[e]) for e in engines}
    lc = {e: max(s[1] for s in sent[e]) for e in engines}
    lines = [
        f"# DeepFace across {world} processes: bytes sent and step time (CPU, gloo)", "",
        f"- date: {date}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; "
        f"{world} processes x {torch.get_num_threads()} thread; cores busy with other work at start: "
        + (f"{busy:.2f}" if busy is not None else "unknown"),
        f"- python {platform.python_version()}, torch {torch.__version__}, unshared {unshared.__version__}",
        f"- command: `torchrun --standalone --nproc_per_node={world} benchmarks/distributed.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- DeepFace, {args.num_classes} classes, float32, batch {args.batch_size} per rank, SGD with momentum",
        "- bytes sent: per rank and step, counted from the collectives (ring algorithm: all-reduce 2(W-1)/W n, "
        "all-gather (W-1) n of its input, reduce-scatter (W-1)/W n, send n); the largest over the ranks",
        f"- step time: the slowest rank's, median of {args.steps} interleaved steps per set-up after a warm-up, "
        "[min, max]. Timings on this shared 2-core machine swing by 25% or more", "",
        "| set-up | images per step (all ranks) | L4-L6 bytes sent | all bytes sent | step time s | images/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e in engines:
        images = args.batch_size * (1 if e == "position" else world)
        total = max(s[0] for s in sent[e])
        lines.append(f"| {NAMES[e]} | {images} | {lc[e] / 1e6:.2f} MB | {total / 1e6:.2f} MB | "
                     f"{med[e]:.2f} [{min(times[e]):.2f}, {max(times[e]):.2f}] | {images / med[e]:.1f} |")
    if "position" in engines:
        predicted = position_parallel_bytes(args.batch_size, world)
        lines += ["", "PositionParallel, predicted from the row plans for this run: "
                  + ", ".join(f"rank {r} {b / 1e6:.3f} MB" for r, b in enumerate(predicted))
                  + "; measured: " + ", ".join(f"rank {r} {s[1] / 1e6:.3f} MB" for r, s in enumerate(sent["position"]))]
    lines += ["", f"## The formula for N ranks (L4-L6, batch {args.batch_size} per rank, float32)", "",
              f"P = L4-L6's parameters, {weight_bytes() / 1e6:.1f} MB (FSDP2 pads each one's rows to a multiple "
              "of N). DDP all-reduces their gradients; FSDP2 all-gathers them for the forward and again for the "
              "backward and reduce-scatters their gradients: both grow with the weights. PositionParallel "
              "sends activations only: L4's input gradient and L6's output, gathered ((N-1) ceil(rows/N) rows "
              "of each to the other ranks), the halo rows that L5 and L6's windows read beyond a rank's own "
              "(about dilation (kernel - 1) rows at each boundary between ranks) and, in the backward, the "
              "gradients of the halo rows of all three; an interior rank has two boundaries, so its share "
              "stops growing with N. Computed from the row plans (`unshared.distributed.rows`), which this "
              "run's measured bytes match:", "", *formula_table(args.batch_size)]
    if "position" in engines and "fsdp" in engines:
        lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|",
                  f"| L4-L6 bytes sent by PositionParallel <= 1/10 of FSDP2's | {lc['position'] / 1e6:.2f} MB vs "
                  f"{lc['fsdp'] / 1e6:.2f} MB (1/{lc['fsdp'] / lc['position']:.0f}) | "
                  f"{'yes' if lc['position'] * 10 <= lc['fsdp'] else 'no'} |",
                  f"| step time of PositionParallel <= FSDP2's | {med['position']:.2f} s vs {med['fsdp']:.2f} s | "
                  f"{'yes' if med['position'] <= med['fsdp'] else 'no'} |"]
    report = "\n".join(lines) + "\n"
    out = Path(args.output) if args.output else HERE / "results" / f"distributed-cpu-{date}.md"
    out.write_text(report)
    if "position" in engines and any(abs(p - s[1]) > 0.5 for p, s in zip(predicted, sent["position"])):
        raise RuntimeError(f"PositionParallel sent other bytes than its row plans predict (report: {out})")
    return report


if __name__ == "__main__":
    main()
