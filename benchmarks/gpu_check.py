"""One prepared run that turns five minutes on a CUDA GPU into numbers (and, with ``--smoke``, the
same code path on the CPU in a few minutes, so that it cannot rot)::

    python benchmarks/gpu_check.py --out DIR            # on a CUDA machine: at most ~5 minutes
    python benchmarks/gpu_check.py --smoke --out DIR    # on the CPU: Triton's interpreter, tiny shapes
    python benchmarks/gpu_check.py --readme-table DIR/results.json   # the README's GPU table

Steps, each with its share of ``--budget`` seconds (what does not fit is skipped and said so):
a correctness pass of every Triton kernel family against float64 on the GPU
(``benchmarks/gpu_passes.py``; its table opens the results, and families that fail are not
timed), the roofline (matmul rate, copy bandwidth), the cases (DeepFace L4/L5/L6 and the workload
cases of ``harness/cases.py`` at batch 32 and 256, float32 with TF32 and bfloat16, every
provider), the per-operation table and every configuration the Triton launcher timed at
L4-256, the host time of a tiny layer per call against cuDNN, and last the CUDA tests (warm
Triton caches by then). DIR gets ``results.md`` (also as ``cuda-DATE-DEVICE.md``, the name under
``benchmarks/results/``), ``results.json``, ``log.txt``, ``tests.txt`` and ``choices.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "src")]

HOW_TO_READ = """How to read the output (DIR/results.md):
- first the correctness pass: relative error (||ours - float64|| / ||float64||) of each kernel
  family's forward, input and weight gradients, 'ok' within the tolerance and when a second
  (direct) launch gives the same result;
- one row per case, dtype, mode and provider: median ms of CUDA-event timings after warm-up, the
  roofline floor (max of flops / measured matmul rate and bytes / measured copy bandwidth) and
  time/floor (1.0 = at the device's limit), each provider's time over the Triton kernels' (> 1:
  Triton faster), and the peak transient memory per weight; 'error' rows say why a provider did not run;
- the targets table (issue 17): L4-256 forward+backward within 4x of the floor, forward within
  2x; workloads at batch 256 3x faster than unfold+bmm and JAX and within 6x of the floor;
  unshared-auto within 1.1x of the fastest provider;
- the launcher's timings: every Triton configuration tried at L4-256 (to tune the lists in
  src/unshared/backends/triton/configs.py); host time: per call, synchronised every call;
- tests.txt: the CUDA tests (DeepFace sizes, autocast, torch.compile, CUDA graphs)."""

SMOKE_CASES = ("tiny",)
DEEPFACE_CASES = ("L4-256", "L4-32", "L5-256", "L5-32", "L6-256", "L6-32")  # the target first
PROVIDERS = ("unshared-auto", "unshared-triton", "unshared-torch", "unfold+bmm", "jax")
TESTS = ["tests/test_triton.py", "-k", "deepface or autocast or block_edges",
         "tests/test_triton_launch.py", "tests/test_compile.py"]
SMOKE_TESTS = ["tests/test_triton_launch.py", "-k", "refused or bucketing"]


def gpu_cases() -> list[str]:
    """DeepFace, then the workload cases at batch 32 and 256 that ``harness/cases.py`` defines."""
    from harness.cases import CASES, GPU_WORKLOAD_CASES

    return list(DEEPFACE_CASES) + sorted(GPU_WORKLOAD_CASES, key=lambda k: (-CASES[k].batch, k))


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


def run_tests(run: Run, seconds: float, selection: list[str]) -> str:
    """The CUDA tests in a subprocess (Triton's on-disk cache is warm by then)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection]
    run.log(f"tests: {' '.join(cmd[1:])} (at most {seconds:.0f} s)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(seconds, 1), env=env)
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
    weight = layer.weight
    rows, reference = [], None
    for name in providers:
        base = dict(case=key, batch=case.batch, dtype=dtype_name(dtype), provider=name,
                    weight_bytes=case.weight_numel * itemsize(dtype))
        try:
            steps = PROVIDERS[name](case, weight, x, grad_out, device)
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
                 "weight_grad": lambda: module.weight_grad(x, gy, g, U.is_kernel_major(w))}
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


def compile_worker(share: str, keys: list[str], dtypes) -> None:
    """Compile (``kernel.warmup``, nothing runs) every Triton candidate that the correctness pass and
    the cases will use, this worker's share (``"K/N"``) of them, in the order the main process
    reaches them: Triton's on-disk cache is then warm when it gets there."""
    import torch

    import gpu_passes
    import unshared.functional as UF
    from unshared.backends.triton import tuning

    tuning.compile_only(True)
    index, count = map(int, share.split("/"))
    jobs = [("check", job) for job in gpu_passes.plan(dtypes)] + [("case", (k, d)) for k in keys for d in dtypes]
    for number, (kind, job) in enumerate(jobs):
        if number % count != index:
            continue
        try:
            if kind == "check":
                gpu_passes.check(*job)
            else:
                from harness.cases import CASES
                from harness.providers import case_tensors
                case = CASES[job[0]]
                layer, x, grad_out = case_tensors(case, types.SimpleNamespace(torch_device=torch.device("cuda")), job[1])
                y = UF.locally_connected(x, layer.weight, None, case.stride, case.padding, backend="triton")
                torch.autograd.grad(y, (x, layer.weight), grad_out)
        except Exception as error:  # the main process meets it again, and reports it
            print(f"compile worker {share}: {kind} {job}: {type(error).__name__}: {error}", file=sys.stderr)


def start_compile_workers(run: Run, keys: list[str]) -> list:
    """Worker processes that compile ahead (a few cores each; the GPU machine has 16)."""
    count = max(1, min(8, (os.cpu_count() or 2) - 4))
    workers = []
    for index in range(count):
        log = (run.out / f"compile-{index}.txt").open("w")
        workers.append(subprocess.Popen([sys.executable, __file__, "--compile-worker", f"{index}/{count}",
                                         "--cases", ",".join(keys), "--out", str(run.out)],
                                        stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
    run.log(f"compiling ahead in {count} worker processes")
    return workers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the results")
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton's interpreter, tiny shapes")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default: 290 on a GPU, 240 with --smoke)")
    parser.add_argument("--cases", help="comma-separated (default: DeepFace L4/L5/L6 and the workloads at 32 and 256)")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false", help="float32 without TF32")
    parser.add_argument("--skip-tests", action="store_true", help="no CUDA tests")
    parser.add_argument("--readme-table", type=Path, metavar="RESULTS_JSON", help="print the README's GPU table")
    parser.add_argument("--compile-worker", metavar="K/N", help=argparse.SUPPRESS)
    parser.add_argument("--no-compile-workers", dest="workers", action="store_false", help="compile in this process only")
    args = parser.parse_args(argv)
    if args.compile_worker:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        compile_worker(args.compile_worker, args.cases.split(","), [torch.float32, torch.bfloat16])
        return 0
    if args.readme_table:
        import gpu_report
        print(gpu_report.readme_table(args.readme_table))
        return 0
    if args.out is None:
        parser.error("--out is required")
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton backend is first used
    budget = args.budget or (240.0 if args.smoke else 290.0)
    run = Run(args.out, budget)
    print(HOW_TO_READ, file=sys.stderr)

    import datetime

    import torch

    import gpu_passes
    import gpu_report
    from harness.devices import CpuDevice, CudaDevice, measure_roofline
    from harness.providers import jax_device
    from unshared.backends import choices as auto_choices
    from unshared.backends.triton import chosen_configs

    if not args.smoke and not torch.cuda.is_available():
        run.log("error: no CUDA GPU (torch.cuda.is_available() is False); use --smoke on a CPU")
        return 2
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    device = CpuDevice() if args.smoke else CudaDevice()
    if args.smoke:  # its timings mean nothing; a 2048^3 bfloat16 matmul takes minutes on a CPU without bf16 units
        device.matmul_size, device.copy_mib = 256, 16
    if not args.smoke:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    keys = args.cases.split(",") if args.cases else list(SMOKE_CASES if args.smoke else gpu_cases())
    dtypes = [torch.float32, torch.bfloat16]
    providers = [p for p in PROVIDERS if p != "jax" or jax_device(device.kind)]
    state: dict = dict(selection=SMOKE_TESTS if args.smoke else TESTS)
    run.log(f"{date}; cases {keys}; providers {providers}; budget {budget:.0f} s; {gpu_report.versions(device)}")

    workers = start_compile_workers(run, keys) if args.workers and not args.smoke else []
    # 1. correctness first (about a fifth of the budget); failed families are not timed
    state["checks"] = gpu_passes.run_checks(run.log, budget * (0.45 if args.smoke else 0.2), dtypes,
                                                 device.torch_device.type)
    failed = set().union(*gpu_passes.failed_families(state["checks"]).values())
    if failed:
        gpu_passes.exclude(failed)
        state["excluded"] = ", ".join(sorted(failed)) + " (failed the correctness pass)"
    gpu_report.report(run, [], None, device, args, state, date)

    roofline, rows = None, []
    try:
        run.log("roofline: matmul rates and copy bandwidth ...")
        roofline = measure_roofline(device, dtypes, 3 if args.smoke else 10)
    except Exception as error:
        run.log(f"roofline failed: {type(error).__name__}: {error}")
    # 2. the cases, the target first, until what is left is the host-time and the tests' share
    reserve = 0.0 if args.skip_tests else (20.0 if args.smoke else min(75.0, budget * 0.25))
    spent, state["skipped"] = [], []
    for key in keys:
        for dtype in dtypes:
            if run.left() - reserve < (max(spent) if spent else 0.0) + 5:
                state["skipped"].append(f"{key} {dtype}")
                continue
            started = time.monotonic()
            target = key == keys[0]
            settings = (dict(budget=0.0, min_reps=2, max_reps=2, warmup=1) if args.smoke else
                        dict(budget=0.25 if target else 0.1, min_reps=5, max_reps=40 if target else 20, warmup=3))
            rows += bench_one(run, key, dtype, device, providers, settings)
            if target:
                state.setdefault("operations", []).extend(per_operation(run, key, dtype, device, settings))
            spent.append(time.monotonic() - started)
            gpu_report.report(run, rows, roofline, device, args, state, date)
        if key == keys[0] and not args.smoke:
            state["tuning"] = gpu_passes.tuning_table(key)
    if state["skipped"]:
        run.log(f"skipped (time budget): {', '.join(state['skipped'])}")
    # 3. host time of a tiny layer, 4. the CUDA tests with what is left
    try:
        state["host"], state["host_rows"] = gpu_passes.host_time(run.log, device, 2.0 if args.smoke else 8.0)
    except Exception as error:
        run.log(f"host time failed: {type(error).__name__}: {error}")
    for worker in workers:  # whatever they still compile is not needed any more
        worker.kill()
    if not args.skip_tests:
        state["tests"] = run_tests(run, max(60.0 if args.smoke else 20.0, run.left() - 5), state["selection"])
    (run.out / "choices.json").write_text(json.dumps(dict(triton=chosen_configs(), auto=auto_choices()), indent=1))
    gpu_report.report(run, rows, roofline, device, args, state, date)
    run.log(f"done in {time.monotonic() - run.start:.0f} s; results in {run.out}")
    print((run.out / "results.md").read_text())
    print(HOW_TO_READ)
    return 0


if __name__ == "__main__":
    sys.exit(main())
