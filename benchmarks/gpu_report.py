"""The GPU check's report (``benchmarks/gpu_check.py`` writes it as it goes): results.md with the
correctness pass first, then the case table, issue 17's targets, the per-operation table, host
time and the launcher's timings; results.json; and the README's GPU table from a results.json."""
from __future__ import annotations

import json
from pathlib import Path

def versions(device) -> str:
    import platform

    import torch

    from harness.report import package_version

    return ", ".join([f"python {platform.python_version()}", f"torch {torch.__version__}", *device.versions(),
                      f"triton {package_version('triton')}", f"jax {package_version('jax') or 'not installed'}"])


def targets(rows, roofline) -> list[str]:
    """Issue 17's targets on what was measured ("" where a row is missing)."""
    from harness.cases import CASES, WORKLOADS

    found = {(r["case"], r["dtype"], r["mode"], r["provider"]): r["median_s"] for r in rows if "median_s" in r}
    lines = []

    def add(what, value, goal, met):
        lines.append(f"| {what} | {goal} | {value:.2f} | {'yes' if met(value) else 'no'} |")

    for (key, dtype, mode, provider), t in found.items():
        floor = next(r["floor_s"] for r in rows if "floor_s" in r and (r["case"], r["dtype"], r["mode"],
                                                                      r["provider"]) == (key, dtype, mode, provider))
        if provider == "unshared-triton" and key == "L4-256":
            limit = 4 if mode == "forward+backward" else 2
            add(f"{key} {dtype} {mode}: time / floor", t / floor, f"≤ {limit}", lambda v, m=limit: v <= m)
        if provider == "unshared-triton" and key.startswith(WORKLOADS) and CASES[key].batch == 256:
            add(f"{key} {dtype} {mode}: time / floor", t / floor, "≤ 6", lambda v: v <= 6)
            for other in ("unfold+bmm", "jax"):
                if (key, dtype, mode, other) in found:
                    add(f"{key} {dtype} {mode}: {other} / ours", found[(key, dtype, mode, other)] / t, "≥ 3",
                        lambda v: v >= 3)
        if provider == "unshared-auto":
            fastest = min(v for (k, d, m, _), v in found.items() if (k, d, m) == (key, dtype, mode))
            add(f"{key} {dtype} {mode}: auto / fastest", t / fastest, "≤ 1.1", lambda v: v <= 1.1)
    if not lines:
        return []
    return ["Targets (issue 17; ours = unshared-triton):", "", "| measure | target | measured | met |",
            "|---|---|---:|---|", *lines, ""]


def report(run, rows, roofline, device, args, state, date) -> None:
    """results.md (and its copy named for benchmarks/results/) and results.json, from what is measured so far."""
    from gpu_passes import checks_table
    from harness.cases import CASES, DTYPES, dtype_name
    from harness.report import Row, results_table

    by_name = {dtype_name(d): d for d in DTYPES.values()}
    measured = [Row(r["case"], CASES[r["case"]], by_name[r["dtype"]], r["mode"], r["provider"], r["timing"],
                    r["peak_bytes"]) for r in rows if "timing" in r]
    baseline = "unshared-triton"
    for r in rows:
        if "timing" in r and roofline is not None:
            floor = roofline.floor(CASES[r["case"]], r["mode"], by_name[r["dtype"]])
            r["floor_s"], r["time_over_floor"] = floor, r["median_s"] / floor
    checks = state.get("checks", [])
    passed = sum(c["ok"] is True for c in checks)
    lines = [f"# unshared GPU check{' (--smoke, CPU: timings meaningless)' if args.smoke else ''}", "",
             f"- date: {date}", *device.describe(None), f"- versions: {versions(device)}",
             f"- correctness pass (every Triton kernel family against float64 on the device): "
             f"{passed} of {len(checks)} passed" + (f"; not timed: {state['excluded']}" if state.get("excluded") else ""),
             f"- tests ({' '.join(state.get('selection', []))}): {state.get('tests', 'not run')}"]
    if roofline is not None:
        lines += ["- measured matmul rate: " + ", ".join(f"{dtype_name(d)} {g / 1e3:.1f} TFLOP/s"
                                                          for d, g in roofline.gflops.items())
                  + f" (float32 with TF32 {'allowed' if args.tf32 else 'not allowed'}); copy bandwidth "
                    f"{roofline.gbps:.0f} GB/s (read + write)"]
    lines += ["- times: CUDA events (host clock for JAX) after warm-up, the L2 cache overwritten before each; "
              "floor = max(flops / matmul rate, bytes once / bandwidth); speed-up = provider median / "
              f"{baseline} median (> 1: {baseline} is faster)", "", "Correctness pass:", "", *checks_table(checks), ""]
    if measured and roofline is not None and any(r.provider == baseline for r in measured):
        lines.append(results_table([r for r in measured if any(b.key == r.key and b.dtype == r.dtype and
                                                                b.provider == baseline for b in measured)],
                                   roofline, baseline, True, 3))
        lines += targets(rows, roofline)
    operations = state.get("operations", [])
    if operations:
        lines += ["Per operation (each pass alone; GB/s counts its three operands once):", "",
                  "| case | dtype | backend | operation | median ms | TFLOP/s | GB/s |", "|---|---|---|---|---:|---:|---:|"]
        lines += [f"| {o['case']} | {o['dtype']} | {o['backend']} | {o['op']} | "
                  + (f"{o['median_s'] * 1e3:.3f} | {o['tflops']:.1f} | {o['gbps']:.0f} |" if "median_s" in o
                     else f"{o['error']} | | |") for o in operations]
        lines.append("")
    for title, table in (("Host time per call (a tiny layer, synchronised after every call):", "host"),
                         ("Every configuration the Triton launcher timed at L4-256 (ms):", "tuning")):
        if state.get(table):
            lines += [title, "", *state[table], ""]
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["Did not run:", ""] + [f"- {r['case']} {r['dtype']} {r['mode']} {r['provider']}: {r['error']}"
                                         for r in errors] + [""]
    if state.get("skipped"):
        lines += ["Skipped (time budget): " + ", ".join(state["skipped"]), ""]
    text = "\n".join(lines)
    (run.out / "results.md").write_text(text)
    (run.out / f"{device.file_stem(date[:10])}.md").write_text(text)
    clean = [{k: v for k, v in r.items() if k != "timing"} for r in rows]
    (run.out / "results.json").write_text(json.dumps(dict(
        date=date, smoke=args.smoke, tests=state.get("tests", "not run"), checks=checks, rows=clean,
        operations=operations, host=state.get("host_rows", [])), indent=1))


def readme_table(path: Path) -> str:
    """The README's GPU table from a run's results.json."""
    data = json.loads(path.read_text())
    rows = {(r["case"], r["dtype"], r["mode"], r["provider"]): r for r in data["rows"] if "median_s" in r}
    names = ("unshared-triton", "unshared-auto", "unshared-torch", "unfold+bmm", "jax")
    lines = ["| case | dtype | mode | Triton ms | auto ms | PyTorch backend ms | unfold+bmm ms | JAX ms | Triton / floor "
             "| unfold+bmm time / Triton | peak memory / weight (Triton, unfold+bmm) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, dtype, mode in dict.fromkeys(k[:3] for k in rows):
        ours = rows.get((case, dtype, mode, "unshared-triton"))
        if ours is None:
            continue
        got = [rows.get((case, dtype, mode, n)) for n in names]
        ms = [f"{r['median_s'] * 1e3:.3f}" if r else "" for r in got]
        bmm = got[3]
        peaks = [f"{r['peak_bytes'] / r['weight_bytes']:.2f}" if r and r.get("peak_bytes") else "n/a" for r in (ours, bmm)]
        lines.append(f"| {case} | {dtype} | {mode} | {' | '.join(ms)} | {ours.get('time_over_floor', 0):.1f}x | "
                     f"{bmm['median_s'] / ours['median_s']:.1f}x | {', '.join(peaks)} |" if bmm else
                     f"| {case} | {dtype} | {mode} | {' | '.join(ms)} | {ours.get('time_over_floor', 0):.1f}x | | |")
    return "\n".join(lines)
