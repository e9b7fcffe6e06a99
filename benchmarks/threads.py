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
DeepFace trunk (C1, M2, C3, L4, L5, L6 with ReLUs, batch 8) per pool. Then, in one pool
(``--layer-pool``, default openmp), each layer's forward + backward inside training steps of the
trunk next to the same layer alone (its ReLU folded in), medians of ``--layer-rounds`` rounds that
alternate a trunk step and the layers alone. Writes ``benchmarks/results/threads-cpu-<date>.md``
unless ``--output`` says otherwise.

How a layer is timed inside the network (``_Clock``): ``time.perf_counter`` marks from hooks that
return None, so what runs is unchanged. Forward: a forward pre-hook on the layer, a forward hook
on its ReLU (or on M2). Backward: a tensor hook on the ReLU's output (fires as the gradient
reaches it, before ReluBackward runs) starts it; a tensor hook on the layer's input (the ReLU
output before it) ends it; for C1, whose input needs no gradient, the return of ``backward()``.
The engine runs the AccumulateGrad of a layer's parameters (top priority) before the next
node, so the weight gradient falls inside. ``register_full_backward_hook`` is not used: it wraps
outputs in a BackwardHookFunction whose view the in-place ReLUs then modify, which raises
("Output 0 of BackwardHookFunction is a view and is being modified inplace"). Alone: the same
modules (hooks and all) on a copy of the layer's input in the network (for all but C1 a leaf
passed through ``clone()``, so the end hook fires before the leaf's AccumulateGrad, as it does
before ReluBackward in the network) and a copy of its output gradient there.
"""
from __future__ import annotations

import argparse
import datetime
import functools
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


#: trunk slices timed as one layer each: a layer and the ReLU after it (M2 has none)
GROUPS = {"C1": (0, 2), "M2": (2, 3), "C3": (3, 5), "L4": (5, 7), "L5": (7, 9), "L6": (9, 11)}


class _Clock:
    """Hooks that mark, with ``time.perf_counter``, where each group's forward and backward start
    and end (module docstring); with ``saved`` a dict, also save each group's input and output
    gradient (for the alone runs)."""

    def __init__(self, groups: list[nn.Module]) -> None:
        self.groups, self.marks, self.saved, self.handles = groups, {}, None, []

    def attach(self) -> None:
        for i, group in enumerate(self.groups):
            self.handles += [group[0].register_forward_pre_hook(functools.partial(self._enter, i)),
                             group[-1].register_forward_hook(functools.partial(self._exit, i))]

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _mark(self, i: int, event: str, *_) -> None:
        self.marks[i, event] = time.perf_counter()

    def _enter(self, i: int, module, args) -> None:
        if self.saved is not None:
            self.saved[i, "x"] = args[0].detach().clone()
        if args[0].requires_grad:
            args[0].register_hook(functools.partial(self._mark, i, "b1"))
        self._mark(i, "f0")

    def _exit(self, i: int, module, args, y: torch.Tensor) -> None:
        self._mark(i, "f1")
        y.register_hook(functools.partial(self._grad, i))

    def _grad(self, i: int, grad: torch.Tensor) -> None:
        self._mark(i, "b0")
        if self.saved is not None:
            self.saved[i, "g"] = grad.clone()

    def step(self, net: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[float, list[float]]:
        """One training step: its ms, and each group's (forward + backward) ms that marks were left by."""
        self.marks.clear()
        start = time.perf_counter()
        net(x.clone() if x.requires_grad else x).backward(grad)
        end = time.perf_counter()
        m = self.marks
        ms = [(m[i, "f1"] - m[i, "f0"] + m.get((i, "b1"), end) - m[i, "b0"]) * 1e3
              for i in range(len(self.groups)) if (i, "f0") in m]
        return (end - start) * 1e3, ms


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


def run_layers(rounds: int, pool: str) -> list[str]:
    trunk, x = _trunk()
    groups = [trunk[a:b] for a, b in GROUPS.values()]
    clock, grad = _Clock(groups), torch.full((x.shape[0], 16, 21, 21), 0.5)
    clock.attach()
    inside, alone, whole, plain = [], [], [], []
    with cpu.use_thread_pool(pool):
        clock.saved = {}
        clock.step(trunk, x, grad)
        saved, clock.saved = clock.saved, None
        inputs = [saved[i, "x"].requires_grad_(i > 0) for i in range(len(groups))]
        for _ in range(rounds):  # a trunk step with hooks, one without, then each layer alone
            clock.step(trunk, x, grad)
            step_ms, ms = clock.step(trunk, x, grad)
            whole.append(step_ms)
            inside.append(ms)
            clock.detach()
            plain.append(clock.step(trunk, x, grad)[0])
            clock.attach()
            alone.append([])
            for i, group in enumerate(groups):
                clock.step(group, inputs[i], saved[i, "g"])
                alone[-1] += clock.step(group, inputs[i], saved[i, "g"])[1]
    clock.detach()
    med = statistics.median
    rows = [(name + " + ReLU" * (stop - start > 1), [r[i] for r in inside], [r[i] for r in alone])
            for i, (name, (start, stop)) in enumerate(GROUPS.items())]
    rows.append(("sum of the layers", [sum(r) for r in inside], [sum(r) for r in alone]))
    lines = [f"| {name} | {med(ins):.2f} | {med(alo):.2f} | {med(ins) / med(alo):.2f} |" for name, ins, alo in rows]
    lines += [f"| whole step, hooks on | {med(whole):.2f} | | |", f"| whole step, no hooks | {med(plain):.2f} | | |"]
    print("\n".join(lines), flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--no-trunk", action="store_true", help="no DeepFace trunk: neither of its tables")
    parser.add_argument("--layer-rounds", type=int, default=None,
                        help="rounds of the layer table (default: --rounds; 0: no table)")
    parser.add_argument("--layer-pool", choices=cpu.THREAD_POOLS, default="openmp")
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
    rounds = args.rounds if args.layer_rounds is None else args.layer_rounds
    if trunk and rounds:
        trunk += ["", f"- layers of the trunk in pool {args.layer_pool}: forward + backward ms of each (its ReLU "
                  "folded in) inside a training step of the trunk, timed by hooks, next to the same on its input and "
                  f"output gradient from the network alone; medians of {rounds} rounds, each a step with hooks and one "
                  "without (after a warm-up step), then each layer alone (after a warm-up call each)", "",
                  "| layer | inside the network ms | alone ms | inside / alone |", "|---|---:|---:|---:|",
                  *run_layers(rounds, args.layer_pool)]
    out = args.output or HERE / "results" / f"threads-cpu-{date[:10]}.md"
    out.write_text("\n".join(head + body + trunk) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
