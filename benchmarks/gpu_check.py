"""One prepared run that turns a few minutes on a CUDA GPU into numbers (and, with ``--smoke``, the
same code path on the CPU in about a minute, so that it cannot rot)::

    python benchmarks/gpu_check.py --out DIR            # on a CUDA machine: at most ~8 minutes
    python benchmarks/gpu_check.py --smoke --out DIR    # on the CPU: Triton's interpreter, tiny shapes

It needs PyTorch with CUDA, Triton and this checkout (JAX only when importable), and writes into
DIR: ``results.md`` (the tables), ``results.json`` (every measurement), ``log.txt`` (everything
printed), ``tests.txt`` (the CUDA tests' output) and ``choices.json`` (the Triton autotuner's
configurations and ``backend="auto"``'s measured choices). Each step has a share of ``--budget``
seconds; what does not fit is skipped and said so, and whatever was measured is written.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "src")]

HOW_TO_READ = """How to read the output (DIR/results.md):
- one row per case (DeepFace L4/L5/L6 at batch 32 and 256), dtype, mode and provider: median ms of
  CUDA-event timings after warm-up, the roofline floor (max of flops / measured matmul rate and
  bytes a step must move / measured copy bandwidth) and time/floor (1.0 = at the device's limit), each provider's
  time over the Triton kernels' (> 1: Triton faster), and the peak transient memory per weight;
- 'error' rows say why a provider did not run (out of memory, a failed kernel);
- the targets table checks DeepFace L4 batch 256 forward+backward: time/floor <= 1.5, unfold+bmm
  at least 10x slower and holding at least 5x the transient memory;
- tests.txt: the CUDA tests at DeepFace sizes; choices.json: what the autotuner and auto chose."""

SMOKE_CASES = ("tiny",)
GPU_CASES = ("L4-256", "L4-32", "L5-256", "L5-32", "L6-256", "L6-32")  # the target first
TEST_SELECTION = "deepface or grid or sharing or agree or refused"


class Run:
    """The output folder, the log, the deadline."""

    def __init__(self, out: Path, budget: float):
        self.out, self.start, self.budget = out, time.monotonic(), budget
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = (out / "log.txt").open("w")

    def log(self, message: str) -> None:
        line = f"[{time.monotonic() - self.start:6.1f}s] {message}"
        print(line, file=sys.stderr, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)


def run_tests(run: Run, seconds: float) -> str:
    """The CUDA tests (DeepFace sizes, banks, grid rows, module/functional) in a subprocess."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_triton.py",
           "-k", TEST_SELECTION]
    run.log(f"tests: {' '.join(cmd[1:])} (at most {seconds:.0f} s)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=seconds, env=env)
        text, summary = out.stdout + out.stderr, (out.stdout.strip().splitlines() or ["(no output)"])[-1]
    except subprocess.TimeoutExpired as timeout:
        text = f"{timeout.stdout or ''}\n{timeout.stderr or ''}\nTIMED OUT after {seconds:.0f} s"
        summary = f"timed out after {seconds:.0f} s"
    (run.out / "tests.txt").write_text(text if isinstance(text, str) else text.decode())
    run.log(f"tests: {summary}")
    return summary


def bench_one(run, key, dtype, device, providers, settings) -> list[dict]:
    """Every provider on one case and dtype: outputs checked against the first that runs, then
    each mode timed and its peak memory measured. Failures become rows with an error."""
    import torch

    from harness.cases import CASES, MODES, dtype_name, itemsize
    from harness.measure import measure
    from harness.providers import PROVIDERS, case_tensors, check_same_output, output_tolerance

    case = CASES[key]
    dev = device.torch_device
    layer, x, grad_out = case_tensors(case, device, dtype)
    rows, reference = [], None
    for name in providers:
        base = dict(case=key, batch=case.batch, dtype=dtype_name(dtype), provider=name,
                    weight_bytes=case.weight_numel * itemsize(dtype))
        try:
            steps = PROVIDERS[name](case, layer.weight, x, grad_out, device)
            output = steps.output()
            if reference is None:
                reference = (name, output)
            else:
                check_same_output(name, key, output, reference[1], output_tolerance(dtype, device), reference[0])
            del output
            for mode in MODES:
                timing = measure(steps.run[mode], device.clock(steps.host_clock), settings["budget"],
                                 settings["min_reps"], settings["max_reps"], settings["warmup"])
                peak = steps.peak_bytes(mode)
                rows.append(dict(base, mode=mode, median_s=timing.median, q1_s=timing.q1, q3_s=timing.q3,
                                 reps=timing.reps, peak_bytes=peak, timing=timing))
                run.log(f"  {key} {dtype_name(dtype)} {mode} {name}: {timing.median * 1e3:.3f} ms"
                        f"{'' if peak is None else f', peak {peak / 2**20:.1f} MiB'}")
            del steps
        except Exception as error:  # out of memory, a kernel that fails: say so and go on
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            run.log(f"  {key} {dtype_name(dtype)} {name}: {reason}")
            rows += [dict(base, mode=mode, error=reason) for mode in MODES]
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def per_operation(run, key, dtype, device, settings) -> list[dict]:
    """Each of the three operations alone, on the Triton and the PyTorch backends: time, achieved
    TFLOP/s and GB/s (operands read and written once), to see which pass limits the layer."""
    import torch

    from harness.cases import CASES, dtype_name, itemsize
    from harness.measure import measure
    from harness.providers import case_tensors
    from unshared import _utils as U
    from unshared.backends import BACKENDS

    case = CASES[key]
    size = itemsize(dtype)
    layer, x, gy = case_tensors(case, device, dtype)
    x = x.detach()
    g = U.Geometry(case.input_size, case.output_size, case.kernel_size, case.stride,
                   tuple((p, p) for p in case.padding), (1,) * case.nd, 1, case.in_channels, case.out_channels)
    w = layer.weight.detach()
    flops = case.flops("forward")
    elements = {"forward": x.numel() + w.numel() + gy.numel(), "input_grad": gy.numel() + w.numel() + x.numel(),
                "weight_grad": x.numel() + gy.numel() + w.numel()}
    rows = []
    for backend in ("triton", "torch"):
        module = BACKENDS[backend]
        calls = {"forward": lambda: module.forward(x, w, g),
                 "input_grad": lambda: module.input_grad(gy, w, g, torch.contiguous_format),
                 "weight_grad": lambda: module.weight_grad(x, gy, g, True)}
        for op, call in calls.items():
            try:
                t = measure(call, device.clock(), settings["budget"], settings["min_reps"], settings["max_reps"],
                            settings["warmup"]).median
                rows.append(dict(case=key, dtype=dtype_name(dtype), backend=backend, op=op, median_s=t,
                                 tflops=flops / t / 1e12, gbps=elements[op] * size / t / 1e9))
                run.log(f"  {key} {dtype_name(dtype)} {backend} {op}: {t * 1e3:.3f} ms, "
                        f"{flops / t / 1e12:.1f} TFLOP/s, {elements[op] * size / t / 1e9:.0f} GB/s")
            except Exception as error:
                rows.append(dict(case=key, dtype=dtype_name(dtype), backend=backend, op=op,
                                 error=f"{type(error).__name__}: {str(error)[:300]}"))
                run.log(f"  {key} {dtype_name(dtype)} {backend} {op}: {type(error).__name__}: {str(error)[:300]}")
    return rows


def report(run, rows, roofline, device, args, tests_summary, date, operations=()) -> None:
    """results.md and results.json from the rows measured so far."""
    from harness.cases import CASES, DTYPES, dtype_name
    from harness.report import Row, results_table, targets_table

    by_name = {dtype_name(d): d for d in DTYPES.values()}
    measured = [Row(r["case"], CASES[r["case"]], by_name[r["dtype"]], r["mode"], r["provider"], r["timing"],
                    r["peak_bytes"]) for r in rows if "timing" in r]
    baseline = args.providers[0]
    for r in rows:
        if "timing" in r and roofline is not None:
            floor = roofline.floor(CASES[r["case"]], r["mode"], by_name[r["dtype"]])
            r["floor_s"], r["time_over_floor"] = floor, r["median_s"] / floor
    lines = [f"# unshared GPU check{' (--smoke, CPU: timings meaningless)' if args.smoke else ''}", "",
             f"- date: {date}", *device.describe(None),
             f"- tests ({TEST_SELECTION}): {tests_summary}"]
    if roofline is not None:
        lines += ["- measured matmul rate: " + ", ".join(f"{dtype_name(d)} {g / 1e3:.1f} TFLOP/s"
                                                          for d, g in roofline.gflops.items())
                  + f" (float32 with TF32 {'allowed' if args.tf32 else 'not allowed'}); copy bandwidth "
                    f"{roofline.gbps:.0f} GB/s (read + write)"]
    lines += ["- times: CUDA events (host clock for JAX) after warm-up, the L2 cache overwritten before each; "
              "floor = max(flops / matmul rate, bytes a step must move / bandwidth); speed-up = provider median / "
              f"{args.providers[0]} median (> 1: {args.providers[0]} is faster)", ""]
    if measured and roofline is not None:
        lines.append(results_table(measured, roofline, baseline, True, 3))
        lines.append(targets_table(measured, roofline))
    if operations:
        lines += ["Per operation (each pass alone; GB/s counts its three operands once):", "",
                  "| case | dtype | backend | operation | median ms | TFLOP/s | GB/s |", "|---|---|---|---|---:|---:|---:|"]
        lines += [f"| {o['case']} | {o['dtype']} | {o['backend']} | {o['op']} | "
                  + (f"{o['median_s'] * 1e3:.3f} | {o['tflops']:.1f} | {o['gbps']:.0f} |" if "median_s" in o
                     else f"{o['error']} | | |") for o in operations]
        lines.append("")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["Did not run:", ""] + [f"- {r['case']} {r['dtype']} {r['mode']} {r['provider']}: {r['error']}"
                                         for r in errors] + [""]
    (run.out / "results.md").write_text("\n".join(lines))
    clean = [{k: v for k, v in r.items() if k != "timing"} for r in rows]
    (run.out / "results.json").write_text(json.dumps(dict(date=date, smoke=args.smoke, tests=tests_summary,
                                                          rows=clean, operations=list(operations)), indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton's interpreter, tiny shapes")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default: 450 on a GPU, 100 with --smoke)")
    parser.add_argument("--cases", help=f"comma-separated (default: {','.join(GPU_CASES)}; smoke: tiny)")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false", help="float32 without TF32")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmark")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton backend is first used
    budget = args.budget or (100.0 if args.smoke else 450.0)
    run = Run(args.out, budget)
    print(HOW_TO_READ, file=sys.stderr)

    import datetime

    import torch

    from harness.devices import CpuDevice, CudaDevice, measure_roofline
    from harness.providers import jax_device
    from unshared.backends import choices as auto_choices
    from unshared.backends.triton import chosen_configs

    if not args.smoke and not torch.cuda.is_available():
        run.log("error: no CUDA GPU (torch.cuda.is_available() is False); use --smoke on a CPU")
        return 2
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    device = CpuDevice() if args.smoke else CudaDevice()
    if not args.smoke:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    keys = args.cases.split(",") if args.cases else list(SMOKE_CASES if args.smoke else GPU_CASES)
    dtypes = [torch.float32, torch.bfloat16]
    args.providers = ["unshared-triton", "unshared-torch", "unfold+bmm"] + (["jax"] if jax_device(device.kind) else [])
    run.log(f"{date}; cases {keys}; providers {args.providers}; budget {budget:.0f} s")
    for line in device.describe(None):
        run.log(line)

    tests_summary = "skipped (--skip-tests)" if args.skip_tests else run_tests(run, min(150.0, run.left() * 0.35))

    roofline, rows, operations = None, [], []
    try:
        run.log("roofline: matmul rates and copy bandwidth ...")
        roofline = measure_roofline(device, dtypes, 3 if args.smoke else 10)
        run.log("roofline: " + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in roofline.gflops.items())
                + f", {roofline.gbps:.0f} GB/s")
    except Exception as error:
        run.log(f"roofline failed: {type(error).__name__}: {error}")
    settings = (dict(budget=0.0, min_reps=2, max_reps=2, warmup=1) if args.smoke
                else dict(budget=0.25, min_reps=5, max_reps=40, warmup=3))
    spent = []
    for key in keys:
        for dtype in dtypes:
            estimate = max(spent) if spent else 0.0
            if run.left() < estimate + 15:
                run.log(f"skipped {key} {dtype} and the rest: {run.left():.0f} s left")
                break
            started = time.monotonic()
            rows += bench_one(run, key, dtype, device, args.providers, settings)
            if key == keys[0]:
                operations += per_operation(run, key, dtype, device, settings)
            spent.append(time.monotonic() - started)
            report(run, rows, roofline, device, args, tests_summary, date, operations)  # what is measured so far
        else:
            continue
        break

    try:  # backend="auto": one training step through the measured choice
        import unshared
        layer = unshared.LocallyConnected2d(16, 16, 5, input_size=25 if not args.smoke else 6,
                                            device=device.torch_device)
        x = torch.randn(8, 16, *(2 * (25 if not args.smoke else 6,)), device=device.torch_device)
        layer(x).square().sum().backward()
    except Exception as error:
        run.log(f"auto step failed: {type(error).__name__}: {error}")
    (run.out / "choices.json").write_text(json.dumps(dict(autotuner=chosen_configs(), auto=auto_choices()), indent=1))
    report(run, rows, roofline, device, args, tests_summary, date, operations)
    run.log(f"done in {time.monotonic() - run.start:.0f} s; results in {run.out}")
    print((run.out / "results.md").read_text())
    print(HOW_TO_READ)
    return 0


if __name__ == "__main__":
    sys.exit(main())
