"""Every measured number in the README and the documentation site is what a recorded file says:
the demo's table and the conclusions drawn from it (``docs/results.json``, ``docs/demo.txt``), the
benchmark prose and the numbers quoted from it (``benchmarks/results/``), the install sizes
(``benchmarks/results/install-sizes.md``) and the test suite's record (``docs/test-suite.txt``).
Each is written by a make target (``figures``, ``install-sizes``, ``test-time``) or by the
benchmark scripts; rerun it and update the pages together. Counts that follow from the layers
(parameters, multiply-adds) are computed here.

The benchmark pages' tables and plots are generated from the files while the site builds
(``docs/_helpers/results_pages.py``), so only the prose around them, and the hand-written tables
of the guide, are checked here; ``test_benchmark_summaries_are_the_files`` checks the generator."""
import json
import re
import sys
import types
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "docs" / "_helpers"))
from results_pages import markdown_table  # noqa: E402  (the site's parser of the results tables)

README = "README.md"
DEMO = "docs/guide/demo.md"
CPU_PAGE = "docs/benchmarks/cpu.md"
GPU_PAGE = "docs/benchmarks/gpu.md"
HOST_PAGE = "docs/benchmarks/host.md"
INSTALLS = "docs/benchmarks/installs.md"
DISTRIBUTED = "docs/guide/distributed.md"


@cache
def text(page: str) -> str:
    return (ROOT / page).read_text()


@cache
def prose(page: str) -> str:
    return " ".join(text(page).split())  # line breaks of the paragraphs do not matter


def said(claim: str, *pages: str) -> None:
    for page in pages:
        assert " ".join(claim.split()) in prose(page), f"{page} does not say: {claim}"


def span(values, digits=0, unit="") -> str:
    """``"low-high"`` of the rounded values (one value when they round alike)."""
    low, high = (f"{v:.{digits}f}" for v in (min(values), max(values)))
    return f"{low}{unit}" if low == high else f"{low}-{high}{unit}"


def cited(page: str, prefix: str, rest: str = r"[\w.-]+") -> Path:
    """The one results file named ``prefix`` then ``rest`` (a pattern) that ``page`` links or renders."""
    names = set(re.findall(rf"(?:benchmarks/results/|\")({prefix}{rest}\.md)[)\"`]", text(page)))
    assert len(names) == 1, f"{page} should use one benchmarks/results/{prefix}*.md, uses {names}"
    return RESULTS / names.pop()


# ----------------------------------------------------------------------------- the demo

DEMO_TXT = (ROOT / "docs" / "demo.txt").read_text().splitlines()
RECORDS = json.loads((ROOT / "docs" / "results.json").read_text())


def record(dataset, training, layer):
    return next(r for r in RECORDS if (r["dataset"], r["training"], r["layer"]) == (dataset, training, layer))


def pct(value) -> float:
    return 100 * value


def test_demo_table_is_the_recorded_run():
    from unshared import demo
    block = re.search(r"```text\n(dataset  training.*?)\n```", text(DEMO), re.S).group(1)
    printed = "\n".join(DEMO_TXT[2:2 + len(block.splitlines())])
    assert block == printed, f"{DEMO}'s demo table is not docs/demo.txt's"
    results = [types.SimpleNamespace(**{k: r[k] for k in ("dataset", "training", "layer", "parameters",
                                                          "middle_parameters", "multiply_adds", "seeds")},
                                     accuracies=r["per_seed"]["accuracy"],
                                     shifted_accuracies=r["per_seed"]["shifted_accuracy"]) for r in RECORDS]
    assert demo.format_results(results) == block, "docs/demo.txt's table is not docs/results.json's"
    assert len(RECORDS) == 2 * 2 * len(demo.LAYERS) and {r["seeds"] for r in RECORDS} == {3}


def test_demo_run_line():
    load = re.match(r"load average at start \(1, 5, 15 min\): (\S+) ", DEMO_TXT[0]).group(1)
    machine = re.match(r"unshared demo on (AMD EPYC), (\d+) cores, 1 PyTorch threads, torch (\S+), Python \S+, "
                       r"(\d{4}-\d\d-\d\d)$", DEMO_TXT[1])
    seconds = re.fullmatch(r"took (\d+) s", DEMO_TXT[-1]).group(1)
    cpu, cores, torch_version, date = machine.groups()
    said(f"on {date} on a {cores}-core {cpu} VM (torch {torch_version}, one PyTorch thread, the demo's default), "
         f"with other jobs running on it (load average {load} at the start): {seconds} s.", DEMO)


def test_demo_conclusions_are_the_records():
    digits = {layer: record("digits", "aligned", layer) for layer in
              ("fully connected", "locally connected", "tiled 2x2", "low-rank 4", "convolution")}
    moved = {layer: record("digits", "shifted", layer) for layer in digits}
    aligned = span([pct(r["accuracy"]) for r in digits.values()], unit="%")
    said(f"every middle layer scores {aligned} on them", DEMO)
    said(f"every middle layer scores {aligned}", README)
    ratio = digits["locally connected"]["middle_parameters"] / digits["convolution"]["middle_parameters"]
    assert ratio == int(ratio)
    said(f"the locally connected one with {int(ratio)} times the convolution's weights", DEMO)
    fc, lc, conv = (pct(digits[k]["shifted_accuracy"]) for k in ("fully connected", "locally connected",
                                                                 "convolution"))
    said(f"fall to {fc:.0f}% and {lc:.0f}% on the moved ones (chance: {100 / 10:.0f}%)", DEMO)
    said(f"the convolution keeps {conv:.0f}%", DEMO)
    said(f"the fully connected and locally connected layers fall to {fc:.0f}% and {lc:.0f}% while the "
         f"convolution keeps {conv:.0f}%", README)
    tiled = [pct(p["accuracy"]) for p in digits["tiled 2x2"]["accuracy_by_shift"]]
    assert abs(tiled[2] - tiled[0]) < 1 and max(tiled[1], tiled[3]) < tiled[0] - 30  # right at 2, wrong at 1, 3
    said("Tiled 2x2 is right again at a 2-pixel shift, a whole tile, and wrong at 1 and 3", DEMO)
    said(f"low-rank 4 keeps {pct(digits['low-rank 4']['shifted_accuracy']):.0f}%", DEMO)

    def both(*layers):
        return span([pct(moved[k][key]) for k in layers for key in ("accuracy", "shifted_accuracy")], unit="%")

    said(f"on randomly moved digits the convolution and low-rank 4 reach {both('convolution', 'low-rank 4')}, "
         f"tiled {both('tiled 2x2')}, fully connected {both('fully connected')}, locally connected "
         f"{both('locally connected')}", DEMO)
    faces = [r for r in RECORDS if r["dataset"] == "faces"]
    spreads = [pct(r[k]) for r in faces for k in ("accuracy_spread", "shifted_accuracy_spread")]
    said(f"the spreads ({span(spreads)} points) are as large as most differences", DEMO)
    drop = {k: pct(record("faces", "aligned", k)["accuracy"] - record("faces", "aligned", k)["shifted_accuracy"])
            for k in ("fully connected", "locally connected", "convolution")}
    said(f"the unshared layers lose {span([drop['fully connected'], drop['locally connected']])} points when the "
         f"faces move, the convolution {drop['convolution']:.0f}", DEMO)


def test_demo_data_sizes():
    pytest.importorskip("sklearn")
    pytest.importorskip("skimage")
    from unshared import demo
    digits, faces = demo.load_dataset("digits"), demo.load_dataset("faces")
    border = 2 * 3
    assert digits[0].shape == (1797, 1, 8 + border, 8 + border) and len(digits[2]) == 10
    assert faces[0].shape == (200, 1, 25 + border, 25 + border)
    said("handwritten digits (1,797 images of 8x8, 10 classes) and faces vs non-faces (200 images of 25x25)", DEMO)
    said(f"with {200 // 4} test images per seed", DEMO)


# ----------------------------------------------------------------------------- the CPU benchmark

CPU_FILE = cited(CPU_PAGE, "cpu-", r"\d{4}-\d\d-\d\d")
CPU_TEXT = CPU_FILE.read_text()
CPU = {(r["case"], r["mode"], r["provider"]): r for r in markdown_table(CPU_TEXT, "| case | batch | mode |")}


def cpu(case, mode, provider, column):
    return float(CPU[(case, mode, provider)][column])


def test_cpu_prose_is_the_recorded_run():
    header = dict(re.findall(r"^- ([^:\n]+): (.*)$", CPU_TEXT, re.M))
    peak = re.search(r"([\d.]+) GFLOP/s", next(v for k, v in header.items() if k.startswith("measured float32 FMA")))
    matmul = re.search(r"([\d.]+) GFLOP/s", header["measured float32 matmul rate (2048^3, median)"]).group(1)
    copy = re.search(r"([\d.]+) GB/s", next(v for k, v in header.items() if k.startswith("measured memory bandwidth")))
    assert "busy with other work at start: 0.00" in header["machine"]  # "idle"
    assert "compiled CPU kernels: avx512" in header["machine"] and "Intel(R) Xeon(R) Processor, 2 cores" in header["machine"]
    said(f"Measured on {header['date']} on a 2-core Intel Xeon VM (AVX-512 kernels, PyTorch 2.13.0 CPU, idle at the "
         f"start), against that machine's own limits as the script measured them: {peak.group(1)} GFLOP/s FMA peak "
         f"(its AVX-512 microbenchmark), {matmul} GFLOP/s for a 2048^3 matmul, {copy.group(1)} GB/s for a copy",
         CPU_PAGE)
    step = "forward+backward"
    l4 = ("L4-64", step)
    memory = cpu(*l4, "unfold+einsum", "peak MiB") / cpu(*l4, "unshared-cpu", "peak MiB")
    floor, faster = cpu(*l4, "unshared-cpu", "x physical floor"), cpu(*l4, "unfold+einsum", "unshared-cpu speed-up")
    headline = f"train DeepFace's L4 at batch 64 at {floor:.1f}x the machine's physical limit"
    tail = f"{faster:.0f}x faster than `unfold` + `einsum` with {memory:.1f}x less transient memory"
    said(f"{headline}, {tail}", CPU_PAGE)
    said(f"{headline} (its measured FMA peak), {tail}", README)
    said(f"{headline} and {faster:.0f}x faster than `unfold` + `einsum`", "docs/guide/backends.md")
    assert f"[benchmarks/results/{CPU_FILE.name}](benchmarks/results/{CPU_FILE.name})" in text(README)
    mine = {case: cpu(case, step, "unshared-cpu", "x physical floor") for case, mode, p in CPU
            if mode == step and p == "unshared-cpu"}
    deepface = [v for case, v in mine.items() if case[:2] in ("L4", "L5", "L6")]
    torch_backend = [cpu(case, step, "unshared-torch", "unshared-cpu speed-up") for case in mine]
    said(f"A training step (forward+backward) runs at {span(mine.values(), 1)}x the physical floor, DeepFace's "
         f"L4-L6 at {span(deepface, 1)}x, and {span(torch_backend, 1)}x faster than the PyTorch backend", CPU_PAGE)
    bias = [cpu(case, step, "unshared-cpu-bias", "unshared-cpu speed-up") for case in mine]
    said(f"The default bias takes {span(bias, 2)}x the time of the same step without it", CPU_PAGE)
    worst = sorted(mine, key=mine.get)[-2:]
    said(f"Furthest from the floor are the CIFAR-like layer ({mine[worst[1]]:.1f}x) and {worst[0]} "
         f"({mine[worst[0]]:.1f}x)", CPU_PAGE)
    assert worst[1] == "cifar-128"


def test_few_channel_prose_is_the_recorded_run():
    path = cited(CPU_PAGE, "cpu-", r"\d{4}-\d\d-\d\d-fewchannel")
    body = path.read_text()
    rows = {(r["case"], r["mode"], r["provider"]): r for r in markdown_table(body, "| case | batch | mode |")}
    header = dict(re.findall(r"^- ([^:\n]+): (.*)$", body, re.M))
    matmul = re.search(r"([\d.]+) GFLOP/s", header["measured float32 matmul rate (2048^3, median)"]).group(1)
    copy = re.search(r"([\d.]+) GB/s", header["measured memory bandwidth (copy of 256 MiB, read + write, median)"])
    assert "busy with other work at start: 0.00" in header["machine"]
    said(f"{header['date']} on a 2-core AMD EPYC VM (AVX-512 kernels, idle at the start; {matmul} GFLOP/s and "
         f"{copy.group(1)} GB/s measured by the script", CPU_PAGE)
    for case in ("genomics-1d-32", "alltnn-1-16"):
        row = rows[(case, "forward+backward", "unshared-cpu")]
        ratio = float(row["median ms"]) / float(row["floor ms"])
        said(f"{case} runs at {row['median ms']} / {row['floor ms']} ms = {ratio:.2f}x" if case.startswith("gen")
             else f"{case} at {row['median ms']} / {row['floor ms']} ms = {ratio:.2f}x", CPU_PAGE)
        assert 2.5 < ratio  # "both just miss the 2.5x"


def test_avx2_prose_is_the_recorded_run():
    """The AVX2 section: its conditions, distances from the physical floor, the one case where the
    PyTorch backend wins, and the comparison with the earlier kernels, from the two files."""
    path = cited(CPU_PAGE, "avx2-cpu-", r"\d{4}-\d\d-\d\d")
    body = path.read_text()
    header = dict(re.findall(r"^- ([^:\n]+): (.*)$", body, re.M))
    assert "compiled CPU kernels: avx2" in header["machine"] and "AMD EPYC, 2 cores" in header["machine"]
    assert float(re.search(r"at start: ([\d.]+)", header["machine"]).group(1)) <= 0.02  # idle
    peak = re.search(r"([\d.]+) GFLOP/s", next(v for k, v in header.items() if k.startswith("measured float32 FMA")))
    matmul = re.search(r"([\d.]+) GFLOP/s", header["measured float32 matmul rate (2048^3, median)"])
    copy = re.search(r"([\d.]+) GB/s", next(v for k, v in header.items() if k.startswith("measured memory bandwidth")))
    said(f"on {header['date']}, against that machine's own limits as the script measured them: {peak.group(1)} "
         f"GFLOP/s FMA peak (its AVX2 microbenchmark), {matmul.group(1)} GFLOP/s for a 2048^3 matmul, "
         f"{copy.group(1)} GB/s for a copy", CPU_PAGE)
    rows = {(r["case"], r["mode"], r["provider"]): r for r in markdown_table(body, "| case | batch | mode |")}
    step = "forward+backward"
    mine = {case: float(r["x physical floor"]) for (case, mode, p), r in rows.items()
            if mode == step and p == "unshared-cpu"}
    deepface = [v for case, v in mine.items() if case[:2] in ("L4", "L5", "L6")]
    said(f"A training step (forward+backward) runs at {span(mine.values(), 1)}x the physical floor, "
         f"DeepFace's L4-L6 at {span(deepface, 1)}x", CPU_PAGE)
    wins = {case: r["unshared-cpu speed-up"] for (case, mode, p), r in rows.items()
            if mode == step and p == "unshared-torch" and float(r["unshared-cpu speed-up"]) < 1}
    assert list(wins) == ["wide-64"], wins
    said(f"The PyTorch backend is faster on one case, wide-64, where it takes {wins['wide-64']}x the kernels'", CPU_PAGE)
    before_path = RESULTS / path.name.replace(".md", "-before.md")
    assert f"benchmarks/results/{before_path.name}" in text(CPU_PAGE)
    before = {(r["case"], r["mode"], r["provider"]): r
              for r in markdown_table(before_path.read_text(), "| case | batch | mode |")}

    def ms(table, case):
        return float(table[(case, step, "unshared-cpu")]["median ms"])
    said(f"took {ms(before, 'wide-64'):.0f} ms for a training step of wide-64 (now {ms(rows, 'wide-64'):.0f}), "
         f"{ms(before, 'L4-64'):.0f} ms at L4-64 (now {ms(rows, 'L4-64'):.0f}), {ms(before, 'cifar-128'):.0f} ms "
         f"on the CIFAR-like layer (now {ms(rows, 'cifar-128'):.0f}) and {ms(before, 'alltnn-1-16'):.0f} ms on "
         f"All-TNN's first layer (now {ms(rows, 'alltnn-1-16'):.0f})", CPU_PAGE)
    worst = max(float(r["median ms"]) / float(before[k]["median ms"]) for k, r in rows.items()
                if k[2] == "unshared-cpu")
    assert worst <= 1.02
    said("no case took more than 1.02x its earlier time", CPU_PAGE)


def test_contiguous_weight_costs_are_the_recorded_run():
    rows = {(r["case"], r["mode"], r["provider"]): r
            for r in markdown_table(cited(CPU_PAGE, "layouts-cpu-").read_text(), "| case | batch | mode |")}

    def cost(case):
        return rows[(case, "forward+backward", "unshared-cpu-contiguous")]["unshared-cpu speed-up"]
    said(f"a training step took {cost('L4-8')}x as long at DeepFace L4 (batch 8), {cost('L5-8')}x at L5, "
         f"{cost('L6-8')}x at L6, {cost('lc-resnet-16')}x at LC-ResNet (16)", CPU_PAGE)
    others = sorted(float(cost(c)) for c in ("cifar-128", "wide-64", "genomics-1d-32", "genomics-1d-wide-32",
                                               "alltnn-1-16"))
    said(f"and {others[0]:.2f}-{others[-1]:.2f}x at CIFAR, wide, genomics and All-TNN", CPU_PAGE)


def test_host_time_prose_is_the_recorded_run():
    path = cited(HOST_PAGE, "overhead-cpu-")
    load = path.read_text().split("load average at start: ")[1].split()[0]
    said(f"load average {float(load):.1f} at the start", HOST_PAGE)


def test_thread_pools_prose_is_the_recorded_run():
    body = cited(HOST_PAGE, "threads-cpu-").read_text()
    rows = {(r["case"], r["pool"], r["variant"]): r for r in markdown_table(body, "| case | pool | variant |")}
    trunk = {r["pool"]: r["ms per step"] for r in markdown_table(body, "| network | pool |")}

    def step(case):
        return f"{rows[(case, 'pthreads', 'no bias')]['ms per step']} -> {rows[(case, 'openmp', 'no bias')]['ms per step']}"
    said(f"genomics-1d-32 {step('genomics-1d-32')} ms, DeepFace L6 at batch 64 {step('L6-64')}, L5 at batch 8 "
         f"{step('L5-8')}, All-TNN's first layer at batch 16 {step('alltnn-1-16')}", HOST_PAGE)
    cases = ("genomics-1d-32", "L6-64", "L5-8", "alltnn-1-16")
    bias = [float(rows[(case, "openmp", "bias")]["/ no bias"]) for case in cases]
    said(f"with the bias, the OpenMP pool takes {span(bias, 2)}x of the time without it", HOST_PAGE)
    relu = {case: float(rows[(case, "openmp", "bias + ReLUs")]["/ no bias"]) for case in cases}
    said(f"it stays at {span([v for c, v in relu.items() if c != 'genomics-1d-32'], 2)}x except "
         f"genomics-1d-32, {relu['genomics-1d-32']:.2f}x", HOST_PAGE)
    said(f"The DeepFace trunk C1-L6 at batch 8 takes {trunk['pthreads']} -> {trunk['openmp']} ms", HOST_PAGE)
    layers = {r["layer"]: float(r["inside / alone"]) for r in markdown_table(body, "| layer | inside the network ms |")
              if r["inside / alone"]}
    said(f"each locally connected layer (with its ReLU) takes {span([layers[f'L{i} + ReLU'] for i in (4, 5, 6)], 2)}x "
         f"of its time alone", HOST_PAGE)


def test_topography_prose_is_the_recorded_run():
    body = (RESULTS / "topography-cpu-2026-12-07.md").read_text()
    two = body.split("torch.set_num_threads(2)")[1].split("torch.set_num_threads(1)")[0]
    rows = {(r["provider"], r["mode"]): float(r["median ms"]) for r in markdown_table(two.strip(), "| provider |")}
    page = "docs/guide/research.md"
    said(f"takes {rows[('unshared', 'forward+backward')]:.0f} ms on this project's 2-core CPU, less than a "
         f"training step of the model at batch 4 ({rows[('AllTNN step, batch 4', 'forward+backward')]:.0f} ms), "
         f"where the same loss written with reshapes and shifted slices takes "
         f"{rows[('hand-written', 'forward+backward')] / 1000:.1f} s", page)
    assert "topography-cpu-2026-12-07.md" in text(page)


# ----------------------------------------------------------------------------- the GPU benchmark

CUDA_FILE = cited(GPU_PAGE, "cuda-")
CUDA_TEXT = CUDA_FILE.read_text()
CUDA = {(r["case"], r["dtype"], r["mode"], r["provider"]): r
        for r in markdown_table(CUDA_TEXT, "| case | batch | dtype | mode |")}
OPS = {(r["case"], r["dtype"], r["backend"], r["operation"]): r
       for r in markdown_table(CUDA_TEXT, "| case | dtype | backend | operation |")}


def gpu(case, dtype, mode, provider, column):
    return float(CUDA[(case, dtype, mode, provider)][column])


def test_cuda_prose_is_the_recorded_run():
    rates = re.search(r"float32 ([\d.]+) TFLOP/s, bfloat16 ([\d.]+) TFLOP/s \(float32 with TF32 allowed\); "
                      r"copy bandwidth (\d+) GB/s", CUDA_TEXT)
    date = re.search(r"^- date: (\d{4}-\d\d-\d\d)T", CUDA_TEXT, re.M).group(1)
    assert "- device: NVIDIA H200 (cuda:0)" in CUDA_TEXT
    said(f"measured with it on {date} on an NVIDIA H200 (measured {rates.group(1)} TFLOP/s TF32 and "
         f"{rates.group(2)} TFLOP/s bfloat16 matmul, {rates.group(3)} GB/s copy", GPU_PAGE)
    step, dtypes = "forward+backward", ("float32", "bfloat16")
    l4 = [("L4-256", d, step) for d in dtypes]
    unfold = [gpu(*k, "unfold+bmm", "unshared-triton speed-up") for k in l4]
    memory = [gpu(*k, "unfold+bmm", "peak MiB") / gpu(*k, "unshared-triton", "peak MiB") for k in l4]
    assert span(memory) == f"{memory[0]:.0f}"
    times = [gpu(*k, "unshared-triton", "median ms") for k in l4]
    said(f"a training step with the Triton kernels takes {times[0]:.1f} ms in "
         f"float32 and {times[1]:.1f} ms in bfloat16: {span(unfold)}x faster "
         f"than unfold+bmm with a {memory[0]:.0f}th of its transient memory, and "
         f"{span([gpu(*k, 'unshared-torch', 'unshared-triton speed-up') for k in l4])}x faster than our PyTorch "
         f"backend. It is still {span([gpu(*k, 'unshared-triton', 'time/floor') for k in l4])}x the roofline floor",
         GPU_PAGE)
    said(f"a training step of L4 at batch 256 takes {times[0]:.1f} ms in float32 and {times[1]:.1f} ms in bfloat16 "
         f"with the Triton kernels: {span(unfold)}x faster than `unfold` + `bmm`", README)
    said(f"on an H200 the Triton kernels train it at batch 256 {span(unfold)}x faster than `unfold` + `bmm`",
         "docs/guide/backends.md")
    assert f"[benchmarks/results/{CUDA_FILE.name}](benchmarks/results/{CUDA_FILE.name})" in text(README)
    rate = {op: [float(OPS[("L4-256", d, "triton", op)]["TFLOP/s"]) for d in dtypes] for op in ("forward", "input_grad")}
    said(f"the forward runs at {span(rate['forward'])} TFLOP/s and the input gradient (a gather over the kernel "
         f"offsets that reach each input position, {9 * 9} short products at L4) at {span(rate['input_grad'])} "
         f"TFLOP/s", GPU_PAGE)
    small = [gpu(c, d, step, "unshared-triton", "median ms") for (c, d, m, p) in CUDA
             if p == "unshared-triton" and m == step and c != "L4-256"]
    assert len(small) == 10 and f"{min(small):.0f}" == "2" and f"{max(small):.1f}" == "2.6"
    said("At batch 32 and on the smaller L5/L6 layers every step takes 2-2.6 ms whatever its size", GPU_PAGE)
    from harness.cases import CASES
    assert CASES["L4-256"].flops(step) > 150 * CASES["L6-32"].flops(step)
    said("(L6 at batch 32 does less than a 150th of the work of L4 at 256)", GPU_PAGE)


# ----------------------------------------------------------------------------- distributed

def test_distributed_table_is_the_recorded_run():
    path = cited(DISTRIBUTED, "distributed-")
    rows = markdown_table(path.read_text(), "| set-up | images per step")
    page = markdown_table(text(DISTRIBUTED), "| set-up | images per step |")
    mb = lambda value: f"{float(value.split()[0]):.1f} MB"  # noqa: E731
    want = [[r["set-up"].replace("(L4-L6)", "on L4-L6"), r["images per step (all ranks)"], mb(r["L4-L6 bytes sent"]),
             mb(r["all bytes sent"]), f"{float(r['step time s'].split()[0]):.1f} s"] for r in rows]
    assert [list(r.values()) for r in page] == want
    by = {r["set-up"].split()[0]: r for r in rows}
    ratio = float(by["FSDP2"]["L4-L6 bytes sent"].split()[0]) / float(by["PositionParallel"]["L4-L6 bytes sent"].split()[0])
    said(f"PositionParallel sends 1/{ratio:.0f} of FSDP2's bytes for L4-L6", DISTRIBUTED)
    said(f"`PositionParallel` sends 1/{ratio:.0f} of FSDP2's bytes for DeepFace's L4-L6", README)
    assert f"[benchmarks/results/{path.name}](benchmarks/results/{path.name})" in text(README)
    said(f"trains fewer images per second than DDP ({by['PositionParallel']['images/s']} against "
         f"{by['DDP']['images/s']})", DISTRIBUTED)


# ----------------------------------------------------------------------------- generated pages

def test_benchmark_summaries_are_the_files():
    """The generator of the benchmark pages: each summary row is its file's row, speed-up and memory."""
    from results_pages import record as load, summary
    rec = load(CPU_FILE.name)
    want = []
    for (case, mode, provider), row in CPU.items():
        if provider != "unshared-cpu":
            continue
        recipe = CPU[(case, mode, "unfold+einsum")]
        want.append([case, mode, row["median ms"], CPU[(case, mode, "unshared-torch")]["median ms"],
                     recipe["median ms"], f"{row['x physical floor']}x", f"{recipe['unshared-cpu speed-up']}x",
                     f"{row['peak/weight']}, {recipe['peak/weight']}"])
    assert summary(rec, ["unshared-cpu", "unshared-torch", "unfold+einsum"]) == want
    rec = load(CUDA_FILE.name)
    rows = summary(rec)
    assert len(rows) == len({k[:3] for k in CUDA})
    first = next(k for k in CUDA if k[3] == "unshared-triton")
    assert rows[0][:3] == list(first[:3]) and rows[0][3] == CUDA[first]["median ms"]


# ----------------------------------------------------------------------------- installs, tests, counts

def test_install_table_is_the_recorded_measurement():
    body = (RESULTS / "install-sizes.md").read_text()
    date = re.search(r"^- date: (\S+)$", body, re.M).group(1)
    machine = re.search(r"^- machine: (.+), Python (\S+)$", body, re.M).groups()
    said(f"What `make test` installs, measured on {date} ({machine[0]}, Python {machine[1]}) by "
         f"`make install-sizes`", INSTALLS)
    table = body[body.index("| step |"):body.index("\n\n", body.index("| step |"))]
    assert table in text(INSTALLS)
    said(re.search(r"^So `make demo`.*$", body, re.M).group(0), INSTALLS)


def test_suite_record_is_readable():
    record = dict(line.split(": ", 1) for line in (ROOT / "docs" / "test-suite.txt").read_text().splitlines())
    assert record["command"] == "python -m pytest -q"
    assert {"date", "machine", "wall time", "result"} <= set(record)


def test_counts_that_follow_from_the_layers():
    from unshared.models import DeepFace
    banks, weights = 55 * 55, 16 * 16 * 9 * 9
    said(f"55 x 55 = {banks:,} filter banks of {weights:,} weights, {banks * weights:,} in all, plus a bias per "
         f"channel and position (16 x 55 x 55 = {16 * 55 * 55:,}), hence {banks * weights + 16 * 55 * 55:,}",
         "docs/index.md")
    net = DeepFace(device="meta")
    total = sum(p.numel() for p in net.parameters())
    said(f"# Taigman et al. 2014: {total:,} parameters", "docs/guide/spectrum.md")
    said(f"(L4 alone has {net.trunk[5].weight.numel() / 1e6:.1f}M weights)", DISTRIBUTED)
    assert re.search(r'^requires-python = ">=3\.10"$', (ROOT / "pyproject.toml").read_text(), re.M)
    said("Both need only Python 3.10+", README)


def test_genomics_example_and_benchmark_are_the_recorded_runs():
    page = "docs/guide/genomics.md"
    run = text("docs/genomics.txt").splitlines()
    block = text(page).split("```text\nmodel ")[1].split("```")[0]
    for line in ("model " + block).strip().splitlines():
        assert line in run, f"{page}: {line!r} is not in docs/genomics.txt"
    recorded = markdown_table(text("benchmarks/results/sparse.md"), "| case | nnz | provider |")
    for row in markdown_table(text(page), "| case | unshared | recipe |"):
        inputs = row["case"].split()[0]  # "200,000": the results file's case starts with it
        found = {r["provider"]: r for r in recorded if r["case"].startswith(inputs + " ->")}
        mine, recipe = found["unshared (auto)"], found["x[:, idx] * w + index_add"]
        assert row["unshared"] == f"{float(mine['median ms']):.1f} ms", row
        assert row["recipe"] == f"{float(recipe['median ms']):,.0f} ms", row
        assert row["x floor"] == mine["x floor"] and row["faster"] == f"{float(mine['speed-up vs recipe']):.1f}x", row


def test_genomics_scale_is_the_recorded_run():
    rows = markdown_table(text("benchmarks/results/sparse-full.md"), "| case | nnz | provider |")
    mine = [r for r in rows if r["provider"] == "unshared (auto)"]
    assert len(mine) == 7  # no case skipped
    floors = [float(r["x floor"]) for r in mine]
    faster = [float(r["speed-up vs recipe"]) for r in mine]
    said(f"a step takes {span(floors, 1)}x the floor and runs {span(faster, 1)}x faster than the recipe",
         "docs/guide/genomics.md")
    recipe = max((r for r in rows if r["provider"].startswith("x[:, idx]")), key=lambda r: float(r["peak MiB"]))
    layer = next(r for r in mine if r["case"] == recipe["case"])
    assert recipe["case"].startswith("1,000,000 ->") and recipe["case"].endswith("4->4ch")
    said(f"(1,000,000 SNPs, 4 channels), its step holds {float(recipe['peak MiB']) / 1024:.1f} GiB and the "
         f"layer's {float(layer['peak MiB']) / 1024:.1f} GiB", "docs/guide/genomics.md")


def test_host_time_against_the_earlier_main_is_the_recorded_run():
    rows = markdown_table(text("benchmarks/results/overhead-checkouts-cpu-2026-12-07.md"), "| layer | mode |")
    ratios = [float(r["this / base"]) for r in rows]
    said(f"take {min(ratios):.2f}-{max(ratios):.2f}x the host time per call", "docs/benchmarks/host.md")
    said(f"layers {min(ratios):.2f}-{max(ratios):.2f}x what it was", "CHANGELOG.md")
