"""The GPU check's passes besides the cases (``benchmarks/gpu_check.py`` runs them): the host time of
a tiny layer, the table of what the Triton launcher timed, and first the correctness pass: every Triton kernel
family (one position per program, tiles of positions, channel-poor), forced in turn, on both weight
layouts, float32 (TF32 as benchmarked) and bfloat16, forward and both gradients, against the
PyTorch backend in float64 on the same GPU; each call twice (the second is the cached direct
launch, which must give the same bits). Outputs are allocated over freed NaN-filled memory, so an
element a kernel never writes shows."""
from __future__ import annotations

import contextlib
import math
import statistics
import time

import torch

from unshared._utils import Geometry, empty_weight
from unshared.backends import pytorch
from unshared.backends.triton import configs, launch, tuning

FAMILIES = ("single", "tiles", "small")


def _banks(count: int, size: int, group: int) -> dict:
    return dict(weight_grid=(-(-count // group),) * 2, banks=(tuple(i // group for i in range(count)),) * 2)


#: name -> (geometry, batch, weight layouts checked): every block edge and path of the kernels
SHAPES = {
    "2d": (Geometry((20, 20), (16, 16), (5, 5), (1, 1), ((0, 0),) * 2, (1, 1), 1, 16, 16), 64, (True, False)),
    "2d-banks": (Geometry((12, 12), (10, 10), (3, 3), (1, 1), ((0, 0),) * 2, (1, 1), 1, 16, 16,
                          **_banks(10, 10, 2)), 32, (True,)),
    "2d-strided": (Geometry((21, 21), (10, 10), (5, 5), (2, 2), ((1, 1),) * 2, (1, 1), 2, 32, 48), 47, (False,)),
    "1d-poor": (Geometry((600,), (591,), (10,), (1,), ((0, 0),), (1,), 1, 4, 8), 64, (False,)),
    "smoke": (Geometry((6, 5), (4, 3), (3, 3), (1, 1), ((0, 0),) * 2, (1, 1), 1, 3, 4), 3, (True, False)),
}


def family_candidates(family: str, g: Geometry) -> dict[str, configs.Candidate]:
    """The configuration of each operation that stands for ``family`` on layer ``g``."""
    chosen = {}
    for op in launch.OPS:
        if family == "small":
            narrow = (g.in_channels if op == "input_grad" else g.out_channels) // g.groups
            chosen[op] = configs.small_candidates(op, narrow, g.kernel_volume * g.in_channels // g.groups)[0]
        else:
            chosen[op] = next(c for c in configs.TENSOR_CORE[op] if (c.block["BLOCK_P"] == 1) == (family == "single"))
    return chosen


def _poisoned(run, device):
    """``run()`` after freeing a NaN-filled block, which PyTorch's allocator then hands to the outputs."""
    torch.full((1 << 22,), float("nan"), device=device)
    return run()


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    got = got.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def check(family: str, shape: str, dtype: torch.dtype, kernel_major: bool, device="cuda") -> dict:
    """Errors of the three operations of one family on one shape; ``ok`` against the tolerance."""
    g, n, _ = SHAPES[shape]
    torch.manual_seed(hash((family, shape, str(dtype), kernel_major)) % 2**31)
    cg = g.in_channels // g.groups
    w = empty_weight((*g.weight_leading, g.out_channels, cg, *g.kernel_size), g.ndim, kernel_major=kernel_major,
                     dtype=dtype, device=device).normal_(0, 1 / math.sqrt(cg * g.kernel_volume))
    x = torch.randn(n, g.in_channels, *g.input_size, dtype=dtype, device=device)
    gy = torch.randn(n, g.out_channels, *g.output_size, dtype=dtype, device=device)
    calls = {"forward": lambda: launch.forward(x, w, g),
             "input_grad": lambda: launch.input_grad(gy, w, g),
             "weight_grad": lambda: launch.weight_grad(x, gy, g, kernel_major)}
    x64, w64, gy64 = x.double(), w.double(), gy.double()
    references = {"forward": lambda: pytorch.forward(x64, w64, g),
                  "input_grad": lambda: pytorch.input_grad(gy64, w64, g, torch.contiguous_format),
                  "weight_grad": lambda: pytorch.weight_grad(x64, gy64, g, kernel_major)}
    small = family == "small"
    tolerance = 1e-2 if dtype == torch.bfloat16 else (1e-5 if small or not launch._tf32_allowed() else 3e-3)
    result = dict(family=family, shape=shape, dtype=str(dtype).removeprefix("torch."), kernel_major=kernel_major,
                  tolerance=tolerance, errors={}, repeat_differs=[])
    with contextlib.ExitStack() as stack:
        for op, candidate in family_candidates(family, g).items():
            stack.enter_context(tuning.forcing(op, candidate))
        for op, call in calls.items():
            first = _poisoned(call, device)
            second = _poisoned(call, device)  # the direct launch of the compiled kernel
            result["errors"][op] = _relative(first, references[op]())
            atomic = op == "weight_grad" and g.banks is not None  # atomics: the order may differ
            if not atomic and not torch.equal(first, second):
                result["repeat_differs"].append(op)
            elif atomic and _relative(second, references[op]()) > tolerance:
                result["repeat_differs"].append(op)
    if device == "cuda":
        torch.cuda.synchronize()
    result["ok"] = all(e <= tolerance for e in result["errors"].values()) and not result["repeat_differs"]
    return result


def plan(dtypes, smoke: bool = False) -> list[tuple]:
    """The checks, most important first: both layouts of every family, then banks, strides, few
    channels (``smoke``: one tiny shape, for the interpreter)."""
    if smoke:  # each family once, the dtypes and layouts spread over them
        return [(f, "smoke", dtypes[i % len(dtypes)], i % 2 == 0) for i, f in enumerate(FAMILIES)]
    first = [(f, "2d", d, km) for d in dtypes for f in FAMILIES for km in (True, False)]
    rest = [(f, s, d, km) for s in ("2d-banks", "2d-strided", "1d-poor") for d in dtypes for f in FAMILIES
            for km in SHAPES[s][2]]
    return first + rest


def run_checks(log, seconds: float, dtypes, device="cuda") -> list[dict]:
    """Every planned check that fits in ``seconds`` (the rest are reported as not run)."""
    results, deadline = [], time.monotonic() + seconds
    for family, shape, dtype, kernel_major in plan(dtypes, smoke=device != "cuda"):
        if time.monotonic() > deadline:
            results.append(dict(family=family, shape=shape, dtype=str(dtype).removeprefix("torch."),
                                kernel_major=kernel_major, ok=None, errors={}, note="time budget"))
            continue
        try:
            r = check(family, shape, dtype, kernel_major, device)
        except Exception as error:  # a kernel that fails to compile or launch
            r = dict(family=family, shape=shape, dtype=str(dtype).removeprefix("torch."), kernel_major=kernel_major,
                     ok=False, errors={}, note=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
        log(f"  check {family} {shape} {r['dtype']} {'kernel-major' if kernel_major else 'channel-major'}: "
            f"{'ok' if r['ok'] else 'FAILED'} {r.get('note', '')} "
            + " ".join(f"{op} {e:.1e}" for op, e in r["errors"].items()))
        results.append(r)
    tuning.clear()  # what the forced runs compiled stays in Triton's caches; no choice is kept
    return results


def failed_families(results) -> dict[str, set[str]]:
    """``{dtype: families}`` that failed a check: the benchmark does not time them."""
    failed: dict[str, set[str]] = {}
    for r in results:
        if r["ok"] is False:
            failed.setdefault(r["dtype"], set()).add(r["family"])
    return failed


def exclude(failed: set[str]) -> None:
    """Drop the candidates of the failed families from what the launcher measures (this process)."""
    for op in launch.OPS:
        configs.TENSOR_CORE[op] = tuple(
            c for c in configs.TENSOR_CORE[op] if ("single" if c.block["BLOCK_P"] == 1 else "tiles") not in failed)
    if "small" in failed:
        configs.SMALL_CHANNELS = 0


def checks_table(results) -> list[str]:
    lines = ["| family | shape | dtype | weight layout | forward | input grad | weight grad | tolerance | result |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        errors = [f"{r['errors'][op]:.1e}" if op in r["errors"] else "" for op in launch.OPS]
        verdict = {True: "ok", False: "FAILED", None: "not run"}[r["ok"]]
        if r.get("repeat_differs"):
            verdict += f" (second call differs: {', '.join(r['repeat_differs'])})"
        if r.get("note"):
            verdict += f" ({r['note']})"
        lines.append(f"| {r['family']} | {r['shape']} | {r['dtype']} | "
                     f"{'kernel-major' if r['kernel_major'] else 'channel-major'} | {' | '.join(errors)} | "
                     f"{r.get('tolerance', '')} | {verdict} |")
    return lines


def tuning_table(case_key: str) -> list[str]:
    """Every candidate the launcher timed for the layer of benchmark case ``case_key`` (its batch bucket)."""
    from harness.cases import CASES

    case = CASES[case_key]
    wanted = f"{(case.nd, *case.input_size)}"[:-1] + ","  # the geometry's encoding starts so: "(2, 63, 63,"
    lines = ["| key | candidate | ms |", "|---|---|---:|"]
    for key, times in tuning.timings().items():
        if wanted not in key or f"), {configs.bucket(case.batch)}," not in key:
            continue
        ranked = sorted(times.items(), key=lambda kv: kv[1] if isinstance(kv[1], float) else float("inf"))
        for candidate, ms in ranked:
            shown = f"{ms:.4f}" if isinstance(ms, float) else ms
            lines.append(f"| {key} | {candidate} | {shown} |")
    return lines


def host_time(log, device, seconds: float) -> tuple[list[str], list[dict]]:
    """Per-call time of a tiny layer (``LocallyConnected2d(4, 4, 3, input_size=6)``, batch 2) on
    ``unshared-auto`` against cuDNN's convolution of the same shape: host-bound, synchronised
    after every call, forward and forward+backward, medians of interleaved rounds."""
    import unshared

    dev = device.torch_device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    layer = unshared.LocallyConnected2d(4, 4, 3, input_size=6, device=dev)
    conv = torch.nn.Conv2d(4, 4, 3, device=dev)
    x = torch.randn(2, 4, 6, 6, device=dev, requires_grad=True)
    steps = {}
    for name, module in (("unshared-auto", layer), ("cudnn-conv", conv)):
        steps[(name, "forward")] = lambda m=module: m(x)
        steps[(name, "forward+backward")] = lambda m=module: m(x).sum().backward()
    for step in steps.values():  # warm-up: compilation, auto's measurement
        step(), step()
    times = {k: [] for k in steps}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(next(iter(times.values()))) < 200:
        for key, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[key].append(time.perf_counter() - start)
    rows = [dict(provider=k[0], mode=k[1], median_us=statistics.median(v) * 1e6, calls=len(v))
            for k, v in times.items()]
    for r in rows:
        log(f"  host time {r['provider']} {r['mode']}: {r['median_us']:.1f} us ({r['calls']} calls)")
    table = ["| provider | mode | median us per call | calls |", "|---|---|---:|---:|"]
    table += [f"| {r['provider']} | {r['mode']} | {r['median_us']:.1f} | {r['calls']} |" for r in rows]
    return table, rows
