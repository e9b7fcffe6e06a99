"""The benchmark harness (``benchmarks/bench.py``, ``benchmarks/harness/``) on a tiny case: the
report's rows and columns on the default CPU path (the format of the committed CPU results), the
GPU providers (Triton in its interpreter when there is no GPU), the CUDA path's error and report
without a GPU, and the prepared GPU check in its CPU smoke mode. Timings here are meaningless; only
the shape of the output is checked."""
import platform
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import unshared

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench  # noqa: E402
from conftest import CPU_AUTO  # noqa: E402
from harness import cases, devices, measure, providers, report  # noqa: E402
from unshared.backends import cpu  # noqa: E402

# the harness's public names in one place
benchmark = types.SimpleNamespace(
    main=bench.main, parse_args=bench.parse_args, MODES=cases.MODES, CASES=cases.CASES,
    CudaDevice=devices.CudaDevice, Roofline=devices.Roofline, header=report.header, Row=report.Row,
    Timing=measure.Timing, results_table=report.results_table, targets_table=report.targets_table,
    output_tolerance=providers.output_tolerance, jax=providers.jax, jax_device=providers.jax_device)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
FAST = ["--quick", "--cases", "tiny", "--warmup", "1", "--min-reps", "2", "--max-reps", "2", "--budget", "0"]
#: the default CPU providers: the compiled kernels (when built) are the first, the speed-up reference
CPU_PROVIDERS = (["unshared-cpu"] if CPU_AUTO == "cpu" else []) + ["unshared-torch", "unfold+einsum"]
#: with the compiled kernels built, the floor is the physical one (their FMA microbenchmark's peak)
PHYSICAL = CPU_AUTO == "cpu"
RATIOS = "x physical floor | x matmul floor" if PHYSICAL else "time/floor"
HEADER = (f"| case | batch | mode | provider | median ms | IQR ms | reps | floor ms | {RATIOS} "
          f"| {CPU_PROVIDERS[0]} speed-up | peak MiB | peak/weight |")


def run(tmp_path, *argv) -> str:
    output = tmp_path / "bench.md"
    benchmark.main([*FAST, *argv, "--output", str(output)])
    return output.read_text()


def rows(text: str) -> list[list[str]]:
    """The results table's rows (the cases table's rows have no numeric batch column)."""
    cells = [[c.strip() for c in line.split("|")[1:-1]]
             for line in text.splitlines() if line.startswith("| tiny |")]
    return [c for c in cells if c[1].isdigit()]


def bullet_names(lines: list[str]) -> list:
    """Each bullet's name (the text before its colon); for the versions bullet, the packages it names."""
    names = []
    for line in lines:
        if line.startswith("- "):
            head, colon, _ = line.partition(":")
            names.append(head if colon else [part.split()[0] for part in line[2:].split(", ")])
    return names


def masked(line: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "N", line)


@pytest.mark.parametrize("slowed", [False, True], ids=["peak", "peak-below-matmul"])
def test_default_cpu_path_keeps_the_committed_format(tmp_path, monkeypatch, slowed):
    # the run's FMA peaks and the values the results table is made from, for the floor's check
    # below; "slowed": a microbenchmark run measured below the matmul rate (a loaded machine)
    peaks, tables = [], []
    fma_peak, results_table = devices.cpu_kernels.fma_peak, bench.results_table

    def recorded_peak(*args, **kwargs):
        peaks.append(fma_peak(*args, **kwargs) / (1000 if slowed else 1))
        return peaks[-1]

    def recorded_table(rows, roofline, *args):
        tables.append((rows, roofline))
        return results_table(rows, roofline, *args)

    monkeypatch.setattr(devices.cpu_kernels, "fma_peak", recorded_peak)
    monkeypatch.setattr(bench, "results_table", recorded_table)
    text = run(tmp_path, "--warmup", "2")  # as the committed run (the last value wins)
    newest = max((REPO / "benchmarks" / "results").glob("cpu-*.md"))
    committed = newest.read_text().splitlines()
    lines = text.splitlines()
    assert lines[0] == "# unshared CPU benchmark (--quick)"
    assert HEADER in lines
    # results recorded before the physical floor (issue 37) have no FMA-peak bullet and say
    # "median" of the bandwidth and "matmul rate" in the floor: only the other bullets must match
    physical_committed = any(line.startswith("- measured float32 FMA peak") for line in committed)
    if CPU_AUTO == "cpu" and physical_committed:  # the committed results were measured with the compiled kernels
        assert HEADER in committed
    assert "| case | layer | weight MiB | forward GFLOP |" in lines
    # the same bullets, and the same text in those that hold no machine-specific names
    # (a line that the floor took the matmul rate comes and goes with the load on the machine)
    new_bullets = ("- float32: the FMA microbenchmark measured less",) + \
        (() if physical_committed else ("- measured float32 FMA peak",))

    def names(text_lines):  # without how a rate was measured when the committed results predate the change
        # (numbers masked: how many copies the bandwidth is the best of follows the run's budget)
        found = [masked(n) if isinstance(n, str) else n
                 for n in bullet_names([l for l in text_lines if not l.startswith(new_bullets)])]
        return found if physical_committed else [re.sub(r" \(.*\)$", "", n) if isinstance(n, str) else n
                                                 for n in found]
    assert names(lines) == names(committed)
    jax = benchmark.jax
    jax_text = ("not installed (provider skipped)" if jax is None else
                jax.__version__ if benchmark.jax_device("cpu") else f"{jax.__version__} (provider not run)")
    assert (f"- python {platform.python_version()}, torch {torch.__version__}, jax {jax_text}, "
            f"unshared {unshared.__version__}") in lines
    same = ("- measured", "- times", "- floor", "- speed-up") if physical_committed else ("- times", "- speed-up")
    for prefix in same:
        assert [masked(l) for l in lines if l.startswith(prefix)] == \
               [masked(l) for l in committed if l.startswith(prefix)]
    providers = CPU_PROVIDERS + (["jax"] if benchmark.jax_device("cpu") else [])
    got = rows(text)
    assert [(r[2], r[3]) for r in got] == [(m, p) for m in benchmark.MODES for p in providers]
    assert all(len(r) == 12 + PHYSICAL and r[1] == "2" and r[6] == "2" for r in got)
    assert all(r[9 + PHYSICAL] == "1.00" for r in got if r[3] == CPU_PROVIDERS[0])

    # the floor: the FMA peak that the microbenchmark measured (the best of its calls), the matmul
    # rate beside it (what a BLAS gets here), the copy bandwidth as the best of many copies
    (measured, roofline), = tables
    rate = r"(\d+\.\d) GFLOP/s"
    if PHYSICAL:
        assert len(peaks) == 3 and roofline.peak == {torch.float32: max(peaks)}
        shown = [re.fullmatch(rf"- measured float32 FMA peak \({cpu.current_isa()} microbenchmark, "
                              rf"{torch.get_num_threads()} threads?, 12 chains of fused multiply-adds per thread, "
                              rf"best of 3 medians\): {rate}, the cores' compute limit", l) for l in lines]
        assert [float(m[1]) for m in shown if m] == [round(max(peaks), 1)]
        assert any(re.fullmatch(rf"- measured float32 matmul rate \(2048\^3, median\): {rate}: what a BLAS "
                                rf"gets here", l) for l in lines)
        assert "x physical floor = median / floor" in text and "max(flops / FMA peak, bytes" in text
        below = "- float32: the FMA microbenchmark measured less than the matmul (it was slowed down)"
        assert (below in text) == (max(peaks) < roofline.gflops[torch.float32])
        assert (below in text) or not slowed
    else:
        assert peaks == [] and not roofline.physical and "max(flops / matmul rate, bytes" in text
    assert re.search(r"^- measured memory bandwidth \(copy of 256 MiB, read \+ write, best of 12\): "
                     r"\d+\.\d GB/s$", text, re.M)
    # every ratio in the table, recomputed from the rates: time / max(flops / rate, bytes / bandwidth)
    case = benchmark.CASES["tiny"]
    for row, cells in zip(measured, got):
        def ratio(gflops):
            floor = max(case.flops(row.mode) / (gflops * 1e9), case.bytes_moved(row.mode) / (roofline.gbps * 1e9))
            return f"{row.timing.median / floor:.1f}"
        assert cells[8] == ratio(max(max(peaks), roofline.gflops[torch.float32]) if PHYSICAL
                                 else roofline.gflops[torch.float32])
        if PHYSICAL:
            assert cells[9] == ratio(roofline.gflops[torch.float32])


def test_physical_floor_in_the_report_and_its_fallback(monkeypatch):
    """Made-up rates: a compute-bound case's ratio is to the FMA peak; where the kernels are not
    built, the floor falls back to the matmul rate and says so."""
    args = benchmark.parse_args(["--providers", "unshared-torch", "--dtype", "float32,bfloat16"])
    device = devices.CpuDevice()
    case = benchmark.CASES["wide-64"]
    roofline = benchmark.Roofline({torch.float32: 200.0, torch.bfloat16: 400.0}, 40.0,
                                  {torch.float32: 500.0}, "avx512 microbenchmark, 2 threads", 9)
    flops = case.flops("forward")
    assert flops / 500e9 > case.bytes_moved("forward") / 40e9  # compute-bound at either rate
    row = benchmark.Row("wide-64", case, torch.float32, "forward", "unshared-torch",
                        benchmark.Timing(2 * flops / 500e9, 0, 0, 5), None)
    table = benchmark.results_table([row], roofline, "unshared-torch", True)
    assert "| floor ms | x physical floor | x matmul floor | unshared-torch speed-up |" in table
    assert f"| {flops / 500e9 * 1e3:.2f} | 2.0 | 0.8 | 1.00 |" in table
    text = benchmark.header(device, "2030-01-02", 0.0, roofline, args)
    assert "- measured float32 FMA peak (avx512 microbenchmark, 2 threads): 500.0 GFLOP/s, the cores' compute limit" in text
    assert "- measured bfloat16 matmul rate (2048^3, median): 400.0 GFLOP/s: what a BLAS gets here" in text
    assert "(copy of 256 MiB, read + write, best of 9): 40.0 GB/s" in text
    assert "; bfloat16: no FMA microbenchmark, the matmul rate" in text
    assert roofline.floor(case, "forward", torch.bfloat16) == roofline.matmul_floor(case, "forward", torch.bfloat16)

    monkeypatch.setattr(cpu, "_LIB", None)  # the compiled kernels not built
    peak, how = device.fma_peak([torch.float32], 3)
    assert peak == {} and "not built" in how
    fallback = benchmark.Roofline({torch.float32: 200.0}, 40.0, peak, how, 9)
    assert fallback.floor(case, "forward", torch.float32) == flops / 200e9
    text = benchmark.header(device, "2030-01-02", 0.0, fallback, benchmark.parse_args(["--providers", "unshared-torch"]))
    assert "FMA peak" not in text.split("- floor")[0]
    assert ("; FMA peak not measured (the compiled CPU kernels, and with them the FMA microbenchmark, are not "
            "built): the compute rate is the matmul rate") in text
    table = benchmark.results_table([row], fallback, "unshared-torch", False)
    assert "| floor ms | time/floor | unshared-torch speed-up |" in table and "| 0.8 | 1.00 |" in table


def test_a_peak_below_the_matmul_rate_is_not_the_floor():
    """Made-up rates: a microbenchmark slowed down below what the matmul reached (a shared VM) does
    not lower the floor's compute rate; the header says the matmul rate took its place."""
    device, case = devices.CpuDevice(), benchmark.CASES["wide-64"]
    roofline = benchmark.Roofline({torch.float32: 173.0, torch.float64: 80.0}, 40.0,
                                  {torch.float32: 134.0, torch.float64: 90.0}, "avx2 microbenchmark, 2 threads", 9)
    assert roofline.compute_rate(torch.float32) == 173.0 and roofline.compute_rate(torch.float64) == 90.0
    assert roofline.peak_below_matmul() == [torch.float32]
    assert roofline.floor(case, "forward", torch.float32) == roofline.matmul_floor(case, "forward", torch.float32)
    text = benchmark.header(device, "2030-01-02", 0.0, roofline,
                            benchmark.parse_args(["--providers", "unshared-torch"]))
    assert ("- float32: the FMA microbenchmark measured less than the matmul (it was slowed down): the "
            "floor's compute rate is the matmul rate") in text
    assert "- float64: the FMA microbenchmark" not in text


def test_gpu_providers_on_the_tiny_case(tmp_path):
    pytest.importorskip("triton", reason="Triton is not installed")
    text = run(tmp_path, "--device", DEVICE, "--providers", "unshared-triton,unshared-torch", "--dtype", "float32")
    assert "| unshared-triton speed-up |" in text and "triton " in text
    got = rows(text)
    dtype = ["float32"] if CUDA else []  # the dtype column: always on CUDA, on the CPU when not float32 alone
    provider = 3 + len(dtype)  # case, batch, [dtype,] mode, provider
    assert [r[2:provider + 1] for r in got] == [
        [*dtype, m, p] for m in benchmark.MODES for p in ("unshared-triton", "unshared-torch")]
    assert all(r[-3] == "1.00" for r in got if r[provider] == "unshared-triton")  # the speed-up reference
    if not CUDA:
        assert "Triton kernels ran in Triton's interpreter" in text


@pytest.mark.skipif(CPU_AUTO != "cpu", reason="the compiled CPU kernels are not built")
def test_contiguous_weight_provider_runs_beside_the_default_layout(tmp_path):
    # the layout that pruning and parameters_to_vector need, timed against the layer's own
    text = run(tmp_path, "--providers", "unshared-cpu,unshared-cpu-contiguous")
    got = rows(text)
    assert [r[2:4] for r in got] == [[m, p] for m in benchmark.MODES for p in ("unshared-cpu", "unshared-cpu-contiguous")]
    case, device = benchmark.CASES["tiny"], devices.CpuDevice()
    layer, x, gy = providers.case_tensors(case, device, torch.float32)
    ours, contiguous = (providers.PROVIDERS[p](case, layer.weight, x, gy, device)
                        for p in ("unshared-cpu", "unshared-cpu-contiguous"))
    assert not layer.weight.is_contiguous()  # the layer's own layout, and a channel-major copy of it
    torch.testing.assert_close(contiguous.output(), ours.output())
    for a, b in zip(contiguous.run["forward+backward"](), ours.run["forward+backward"]()):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(CPU_AUTO != "cpu", reason="the compiled CPU kernels are not built")
def test_bias_providers_time_the_layers_as_users_build_them(tmp_path):
    # the default per-position bias beside the same kernels without one; its gradient is part of the step
    text = run(tmp_path, "--providers", "unshared-cpu,unshared-cpu-bias,unshared-auto-bias")
    assert [r[2:4] for r in rows(text)] == [[m, p] for m in benchmark.MODES
                                            for p in ("unshared-cpu", "unshared-cpu-bias", "unshared-auto-bias")]
    case, device = benchmark.CASES["tiny"], devices.CpuDevice()
    layer, x, gy = providers.case_tensors(case, device, torch.float32)
    plain, biased = (providers.PROVIDERS[p](case, layer.weight, x, gy, device)
                     for p in ("unshared-cpu", "unshared-cpu-bias"))
    torch.testing.assert_close(biased.output(), plain.output())
    gx, gw, gb = biased.run["forward+backward"]()
    for a, b in zip((gx, gw), plain.run["forward+backward"]()):
        torch.testing.assert_close(a, b)
    assert gb.shape == (case.out_channels, *case.output_size)
    torch.testing.assert_close(gb, gy.sum(0))


def test_dtypes_add_a_column_and_scale_the_bytes(tmp_path):
    text = run(tmp_path, "--providers", "unshared-torch,unfold+einsum", "--dtype", "float32,bfloat16")
    assert "| case | batch | dtype | mode | provider |" in text
    assert "| case | layer | weight MiB float32 | weight MiB bfloat16 | forward GFLOP |" in text
    assert "bytes = e·(input" in text and "float32 4, bfloat16 2" in text
    assert "- measured bfloat16 matmul rate (2048^3, median): " in text
    got = rows(text)
    providers = ("unshared-torch", "unfold+einsum")
    assert [(r[2], r[3], r[4]) for r in got] == [
        (d, m, p) for d in ("float32", "bfloat16") for m in benchmark.MODES for p in providers]
    case = benchmark.CASES["tiny"]
    for mode in benchmark.MODES:
        assert case.bytes_moved(mode, 2) * 2 == case.bytes_moved(mode, 4) == case.bytes_moved(mode)


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--device", "cuda"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and out.stdout == ""
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    assert out.stderr.strip().splitlines() == [
        f"python benchmarks/bench.py: error: --device cuda needs a CUDA GPU, but torch.cuda.is_available() is False "
        f"(torch {torch.__version__}, {build})"]


def test_cuda_unavailable_raises_system_exit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"--device cuda needs a CUDA GPU") as info:
        benchmark.main(["--device", "cuda"])
    assert "\n" not in str(info.value)


def test_unavailable_provider_and_bad_arguments(capsys, monkeypatch):
    if benchmark.jax is None:
        with pytest.raises(SystemExit, match=r"^error: provider jax: `import jax` failed$"):
            benchmark.main([*FAST, "--providers", "jax"])
    from unshared.backends import cpu
    monkeypatch.setattr(cpu, "_LIB", None)  # the compiled kernels not built: said, and left out of the defaults
    monkeypatch.setattr(cpu, "_REASON", "the compiled CPU kernels are not built: (simulated)")
    with pytest.raises(SystemExit, match=r"^error: provider unshared-cpu: the compiled CPU kernels are not built"):
        benchmark.main([*FAST, "--providers", "unshared-cpu"])
    with pytest.raises(SystemExit, match=r"^error: provider unshared-cpu-contiguous: the compiled CPU kernels are not"):
        benchmark.main([*FAST, "--providers", "unshared-cpu-contiguous"])
    assert "unshared-cpu" not in benchmark.parse_args([]).providers
    monkeypatch.undo()
    for argv, error in ((["--providers", "cudnn"], "unknown provider(s) ['cudnn']; choose from ['unshared-auto', "),
                        (["--dtype", "float64"], "unknown dtype(s) ['float64']; choose from ['float32', "),
                        (["--cases", "L9-1"], "unknown case(s) ['L9-1']; choose from ['L4-8', "),
                        (["--min-reps", "1"], "need --warmup >= 1 and --min-reps >= 2 (quartiles)")):
        with pytest.raises(SystemExit, match="^2$"):  # argparse's usage error
            benchmark.parse_args(argv)
        assert f"error: {error}" in capsys.readouterr().err


def test_cuda_report_without_a_gpu(monkeypatch):
    """The CUDA report's header, table and targets from made-up rates and times (nothing measured)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (70 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H100 80GB HBM3")
    args = benchmark.parse_args(["--device", "cuda", "--providers", "unshared-triton,unfold+einsum"])
    assert args.keys == ["L4-32", "L4-256", "L5-32", "L5-256", "L6-32", "L6-256"]
    assert args.dtypes == [torch.float32, torch.bfloat16] and args.show_dtype and args.warmup == 5

    device = object.__new__(benchmark.CudaDevice)  # without __init__, which needs a GPU
    device.index = 0
    device.properties = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0,
                                              multi_processor_count=132)
    assert device.file_stem("2030-01-02") == "cuda-2030-01-02-nvidia-h100-80gb-hbm3"
    roofline = benchmark.Roofline({torch.float32: 50e3, torch.bfloat16: 700e3}, 3000.0)
    text = benchmark.header(device, "2030-01-02", 0.0, roofline, args)
    assert text.startswith("# unshared CUDA benchmark\n\n- date: 2030-01-02\n- device: NVIDIA H100 80GB HBM3 "
                           "(cuda:0), compute capability 9.0, 132 SMs, 80.0 GiB (70.0 GiB free at start)")
    assert ("- measured float32 matmul rate (8192^3, median, full float32 (TF32 not allowed)): "
            "50000.0 GFLOP/s") in text
    assert "float32 matmuls (cuBLAS, the Triton kernels, JAX): full float32 (TF32 not allowed)" in text
    assert "- measured bfloat16 matmul rate (8192^3, median): 700000.0 GFLOP/s" in text
    assert "triton " in text and "NVIDIA driver " in text and "CUDA events" in text
    assert "unshared-triton's median (> 1: unshared-triton is faster)" in text
    previous, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, True  # --tf32
    try:
        assert "(8192^3, median, TF32 allowed)" in benchmark.header(device, "2030-01-02", 0.0, roofline, args)
        assert benchmark.output_tolerance(torch.float32, device) == 1e-2
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous

    case = benchmark.CASES["L4-256"]
    floor = roofline.floor(case, "forward+backward", torch.bfloat16)
    assert floor == max(case.flops("forward+backward") / 700e12, case.bytes_moved("forward+backward", 2) / 3000e9)
    made_up = [benchmark.Row("L4-256", case, torch.bfloat16, "forward+backward", name,
                             benchmark.Timing(t, t, t, 20), peak)
               for name, t, peak in (("unshared-triton", 1.2 * floor, 100 * 2**20),
                                     ("unfold+einsum", 15 * floor, 400 * 2**20))]
    table = benchmark.results_table(made_up, roofline, "unshared-triton", True, 3)
    assert table.splitlines()[0].startswith("| case | batch | dtype | mode | provider | median ms |")
    assert "| L4-256 | 256 | bfloat16 | forward+backward | unfold+einsum |" in table
    assert "| 15.0 | 12.50 | 400.0 |" in table
    targets = benchmark.targets_table(made_up, roofline)
    assert "| bfloat16 | time / floor | ≤ 1.5 | 1.20 | yes |" in targets
    assert "| bfloat16 | unfold+einsum time / ours | ≥ 10 | 12.50 | yes |" in targets
    assert "| bfloat16 | unfold+einsum peak memory / ours | ≥ 5 | 4.00 | no |" in targets
    assert benchmark.targets_table(made_up[:1], roofline) == ""


def test_gpu_check_smoke_runs_the_same_code_path_on_the_cpu(tmp_path):
    # what a GPU machine runs, on tiny shapes in Triton's interpreter: the script cannot rot
    pytest.importorskip("triton", reason="Triton is not installed")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("results.md", "results.json", "log.txt", "tests.txt", "choices.json"):
        assert (tmp_path / name).is_file(), name
    import json
    data = json.loads((tmp_path / "results.json").read_text())
    measured = {(r["dtype"], r["mode"], r["provider"]) for r in data["rows"] if "median_s" in r}
    assert {("float32", "forward+backward", "unshared-triton"), ("bfloat16", "forward", "unshared-torch"),
            ("float32", "forward", "unfold+bmm")} <= measured
    assert "passed" in data["tests"] and "How to read" in out.stdout
    assert "| tiny | 2 | float32 | forward | unshared-triton |" in (tmp_path / "results.md").read_text()


def test_overhead_benchmark_writes_its_table(tmp_path):
    # benchmarks/overhead.py on few calls: every layer, mode and provider, the header's facts
    output = tmp_path / "overhead.md"
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--device", "cpu", "--calls", "2",
                          "--samples", "3", "--warmup", "1", "--output", str(output)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = output.read_text()
    assert text in out.stdout
    for field in ("- date: ", "load average at start: ", f"torch {torch.__version__}", "torch.set_num_threads(1)"):
        assert field in text
    for nd in (1, 2, 3):
        for mode in ("forward", "forward+backward"):
            for provider in ("unshared", f"nn.Conv{nd}d", "unfold+einsum"):
                assert re.search(rf"^\| {nd}d \| {re.escape(mode)} \| {re.escape(provider)} \| \d+\.\d \| "
                                 rf"\d+\.\d-\d+\.\d \| \d+\.\d\d \|$", text, re.M), (nd, mode, provider)


def test_checkouts_benchmark_compares_two_trees(tmp_path):
    # benchmarks/checkouts.py against this very checkout: one round, one rep of the tiny case
    script = REPO / "benchmarks" / "checkouts.py"
    out = subprocess.run([sys.executable, str(script), str(REPO), "--cases", "tiny", "--rounds", "2", "--reps", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "load average at start" in out.stdout
    for mode in ("forward", "forward+backward"):
        assert re.search(rf"^\| tiny \| {re.escape(mode)} \| \d+\.\d\d \| \d+\.\d\d \| \d\.\d{{3}} \|$", out.stdout, re.M)
    bad = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "is not a checkout of unshared" in bad.stderr
