"""Every measured number in the README is what a recorded file says: the demo's table and the
conclusions drawn from it (``docs/results.json``, ``docs/demo.txt``), the CPU and GPU benchmark
tables and the prose about them (``benchmarks/results/``), the install sizes
(``benchmarks/results/install-sizes.md``) and the test suite's time (``docs/test-suite.txt``).
Each is written by a make target (``figures``, ``install-sizes``, ``test-time``) or by the
benchmark scripts; rerun it and update the README together. Counts that follow from the layers
(parameters, multiply-adds) are computed here."""
import json
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PROSE = " ".join(README.split())  # line breaks of the README's paragraphs do not matter
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))


def said(text: str) -> None:
    assert " ".join(text.split()) in PROSE, f"the README does not say: {text}"


def markdown_table(text: str, header: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose header line starts with ``header``, by column name."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def span(values, digits=0, unit="") -> str:
    """``"low-high"`` of the rounded values (one value when they round alike)."""
    low, high = (f"{v:.{digits}f}" for v in (min(values), max(values)))
    return f"{low}{unit}" if low == high else f"{low}-{high}{unit}"


# ----------------------------------------------------------------------------- the demo

DEMO_TXT = (ROOT / "docs" / "demo.txt").read_text().splitlines()
RECORDS = json.loads((ROOT / "docs" / "results.json").read_text())


def record(dataset, training, layer):
    return next(r for r in RECORDS if (r["dataset"], r["training"], r["layer"]) == (dataset, training, layer))


def pct(value) -> float:
    return 100 * value


def test_demo_table_is_the_recorded_run():
    from unshared import demo
    block = re.search(r"```text\n(dataset  training.*?)\n```", README, re.S).group(1)
    printed = "\n".join(DEMO_TXT[2:2 + len(block.splitlines())])
    assert block == printed, "the README's demo table is not docs/demo.txt's"
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
         f"with other jobs running on it (load average {load} at the start): {seconds} s.")


def test_demo_conclusions_are_the_records():
    digits = {layer: record("digits", "aligned", layer) for layer in
              ("fully connected", "locally connected", "tiled 2x2", "low-rank 4", "convolution")}
    moved = {layer: record("digits", "shifted", layer) for layer in digits}
    said(f"every middle layer scores {span([pct(r['accuracy']) for r in digits.values()], unit='%')} on them")
    ratio = digits["locally connected"]["middle_parameters"] / digits["convolution"]["middle_parameters"]
    assert ratio == int(ratio)
    said(f"the locally connected one with {int(ratio)} times the convolution's weights")
    fc, lc = (pct(digits[k]["shifted_accuracy"]) for k in ("fully connected", "locally connected"))
    said(f"fall to {fc:.0f}% and {lc:.0f}% on the moved ones (chance: {100 / 10:.0f}%)")
    said(f"the convolution keeps {pct(digits['convolution']['shifted_accuracy']):.0f}%")
    tiled = [pct(p["accuracy"]) for p in digits["tiled 2x2"]["accuracy_by_shift"]]
    assert abs(tiled[2] - tiled[0]) < 1 and max(tiled[1], tiled[3]) < tiled[0] - 30  # right at 2, wrong at 1, 3
    said("Tiled 2x2 is right again at a 2-pixel shift, a whole tile, and wrong at 1 and 3")
    said(f"low-rank 4 keeps {pct(digits['low-rank 4']['shifted_accuracy']):.0f}%")

    def both(*layers):
        return span([pct(moved[k][key]) for k in layers for key in ("accuracy", "shifted_accuracy")], unit="%")

    said(f"on randomly moved digits the convolution and low-rank 4 reach {both('convolution', 'low-rank 4')}, "
         f"tiled {both('tiled 2x2')}, fully connected {both('fully connected')}, locally connected "
         f"{both('locally connected')}")
    faces = [r for r in RECORDS if r["dataset"] == "faces"]
    spreads = [pct(r[k]) for r in faces for k in ("accuracy_spread", "shifted_accuracy_spread")]
    said(f"the spreads ({span(spreads)} points) are as large as most differences")
    drop = {k: pct(record("faces", "aligned", k)["accuracy"] - record("faces", "aligned", k)["shifted_accuracy"])
            for k in ("fully connected", "locally connected", "convolution")}
    said(f"the unshared layers lose {span([drop['fully connected'], drop['locally connected']])} points when the "
         f"faces move, the convolution {drop['convolution']:.0f}")


def test_demo_data_sizes():
    pytest.importorskip("sklearn")
    pytest.importorskip("skimage")
    from unshared import demo
    digits, faces = demo.load_dataset("digits"), demo.load_dataset("faces")
    border = 2 * 3
    assert digits[0].shape == (1797, 1, 8 + border, 8 + border) and len(digits[2]) == 10
    assert faces[0].shape == (200, 1, 25 + border, 25 + border)
    said("handwritten digits (1,797 images of 8x8, 10 classes) and faces vs non-faces (200 images of 25x25)")
    said(f"with {200 // 4} test images per seed")


# ----------------------------------------------------------------------------- the CPU benchmark

def cited(prefix: str, rest: str = r"[\w.-]+") -> Path:
    """The results file of ``benchmarks/results/`` named ``prefix`` then ``rest`` (a pattern) that the README links."""
    names = set(re.findall(rf"\(benchmarks/results/({prefix}{rest}\.md)\)", README))
    assert len(names) == 1, f"the README should link one benchmarks/results/{prefix}*.md, links {names}"
    return RESULTS / names.pop()


CPU_FILE = cited("cpu-", r"\d{4}-\d\d-\d\d")
CPU_TEXT = CPU_FILE.read_text()
CPU = {(r["case"], r["mode"], r["provider"]): r for r in markdown_table(CPU_TEXT, "| case | batch | mode |")}
CPU_LAYERS = {"L4": "DeepFace L4", "L5": "DeepFace L5", "L6": "DeepFace L6", "cifar": "CIFAR-like"}


def cpu(case, mode, provider, column):
    return float(CPU[(case, mode, provider)][column])


def test_cpu_table_is_the_recorded_run():
    assert f"[benchmarks/results/{CPU_FILE.name}](benchmarks/results/{CPU_FILE.name})" in README
    readme = markdown_table(README, "| layer (batch) | mode | cpu kernels ms |")
    want = []
    for (case, mode, provider), row in CPU.items():
        if provider != "unshared-cpu":
            continue
        layer, batch = case.split("-")
        other = {p: CPU[(case, mode, p)] for p in ("unshared-torch", "unfold+einsum")}
        want.append([f"{CPU_LAYERS[layer]} ({batch})", mode, row["median ms"], other["unshared-torch"]["median ms"],
                     other["unfold+einsum"]["median ms"], f"{row['time/floor']}x",
                     f"{other['unshared-torch']['unshared-cpu speed-up']}x, "
                     f"{other['unfold+einsum']['unshared-cpu speed-up']}x",
                     f"{row['peak/weight']}, {other['unfold+einsum']['peak/weight']}"])
    assert [list(r.values()) for r in readme] == want


def test_few_channel_table_is_the_recorded_run():
    path = cited("cpu-", r"\d{4}-\d\d-\d\d-fewchannel")
    rows = {(r["case"], r["mode"], r["provider"]): r for r in markdown_table(path.read_text(), "| case | batch | mode |")}
    readme = markdown_table(README, "| case (batch) | cpu kernels ms | unfold+einsum ms |")
    assert readme, "the README has no few-channel table"
    for row in readme:
        ours, unfold = (rows[(row["case (batch)"], "forward+backward", p)] for p in ("unshared-cpu", "unfold+einsum"))
        assert [row["cpu kernels ms"], row["unfold+einsum ms"], row["speed-up"], row["cpu kernels / floor"]] == [
            ours["median ms"], unfold["median ms"], f"{unfold['unshared-cpu speed-up']}x", f"{ours['time/floor']}x"]


def test_contiguous_weight_costs_are_the_recorded_run():
    rows = {(r["case"], r["mode"], r["provider"]): r
            for r in markdown_table(cited("layouts-cpu-").read_text(), "| case | batch | mode |")}

    def cost(case):
        return rows[(case, "forward+backward", "unshared-cpu-contiguous")]["unshared-cpu speed-up"]
    said(f"a training step took {cost('L4-8')}x as long at DeepFace L4 (batch 8), {cost('L5-8')}x at L5, "
         f"{cost('L6-8')}x at L6, {cost('lc-resnet-16')}x at LC-ResNet (16)")
    others = sorted(float(cost(c)) for c in ("cifar-128", "wide-64", "genomics-1d-32", "genomics-1d-wide-32",
                                               "alltnn-1-16"))
    said(f"and {others[0]:.2f}-{others[-1]:.2f}x at CIFAR, wide, genomics and All-TNN")


def test_host_time_table_is_the_recorded_run():
    path = cited("overhead-cpu-")
    rows = {(r["layer"], r["mode"], r["provider"]): r for r in markdown_table(path.read_text(), "| layer | mode | provider |")}
    readme = markdown_table(README, "| layer | mode | unshared us |")
    assert len(readme) == 6
    for row in readme:
        layer, mode = row["layer"], row["mode"]
        ours = rows[(layer, mode, "unshared")]
        assert [row["unshared us"], row["nn.Conv us"], row["unfold+einsum us"], row["unshared / nn.Conv"]] == [
            ours["median us/call"], rows[(layer, mode, f"nn.Conv{layer}")]["median us/call"],
            rows[(layer, mode, "unfold+einsum")]["median us/call"], ours["/ nn.Conv"]]
    said(f"load average {path.read_text().split('load average at start: ')[1].split()[0][:3]} at the start")


def test_cpu_prose_is_the_recorded_run():
    header = dict(re.findall(r"^- ([^:\n]+): (.*)$", CPU_TEXT, re.M))
    matmul = re.search(r"([\d.]+) GFLOP/s", header["measured float32 matmul rate (2048^3, median)"]).group(1)
    copy = re.search(r"([\d.]+) GB/s", header["measured memory bandwidth (copy of 256 MiB, read + write, median)"])
    assert "busy with other work at start: 0.00" in header["machine"]  # "idle"
    assert "compiled CPU kernels: avx512" in header["machine"] and "AMD EPYC, 2 cores" in header["machine"]
    said(f"Measured on {header['date']} on a 2-core AMD EPYC VM (AVX-512 kernels, PyTorch 2.13.0 CPU, idle at the start)")
    said(f"({matmul} GFLOP/s for a 2048^3 matmul, {copy.group(1)} GB/s for a copy)")
    step = "forward+backward"
    l4 = ("L4-64", step)
    memory = cpu(*l4, "unfold+einsum", "peak MiB") / cpu(*l4, "unshared-cpu", "peak MiB")
    said(f"train DeepFace's L4 at batch 64 at {cpu(*l4, 'unshared-cpu', 'time/floor'):.1f}x the machine's limit, "
         f"{cpu(*l4, 'unfold+einsum', 'unshared-cpu speed-up'):.0f}x faster than `unfold` + `einsum` with "
         f"{memory:.1f}x less transient memory")
    big = [f"{layer}-64" for layer in ("L4", "L5", "L6")]
    said(f"At batch 64 a training step (forward+backward) runs at "
         f"{span([cpu(c, step, 'unshared-cpu', 'time/floor') for c in big], 1)}x the floor, "
         f"{span([cpu(c, step, 'unshared-torch', 'unshared-cpu speed-up') for c in big], 1)}x faster than the "
         f"PyTorch backend and {span([cpu(c, step, 'unfold+einsum', 'unshared-cpu speed-up') for c in big])}x "
         f"faster than unfold+einsum")
    weight_mb = float(next(r for r in markdown_table(CPU_TEXT, "| case | layer |") if r["case"] == "L4-8")
                      ["weight MiB"]) * 2**20 / 1e6
    said(f"the forward reads the {weight_mb:.0f} MB L4 weight")
    said(f"({cpu('L4-8', step, 'unshared-cpu', 'time/floor'):.1f}x the floor, which counts each once")
    cifar = [cpu("cifar-128", m, "unfold+einsum", "time/floor") for m in ("forward", step)]
    said(f"CIFAR-like layer unfold+einsum itself runs at {span(cifar, 1)}x the floor")


# ----------------------------------------------------------------------------- the GPU benchmark

CUDA_FILE = cited("cuda-")
CUDA_TEXT = CUDA_FILE.read_text()
CUDA = {(r["case"], r["dtype"], r["mode"], r["provider"]): r
        for r in markdown_table(CUDA_TEXT, "| case | batch | dtype | mode |")}
OPS = {(r["case"], r["dtype"], r["backend"], r["operation"]): r
       for r in markdown_table(CUDA_TEXT, "| case | dtype | backend | operation |")}


def gpu(case, dtype, mode, provider, column):
    return float(CUDA[(case, dtype, mode, provider)][column])


def test_cuda_table_is_the_recorded_run():
    assert f"[benchmarks/results/{CUDA_FILE.name}](benchmarks/results/{CUDA_FILE.name})" in README
    readme = markdown_table(README, "| case | dtype | mode | Triton ms |")
    want = []
    for (case, dtype, mode, provider), row in CUDA.items():
        if provider != "unshared-triton":
            continue
        other = {p: CUDA[(case, dtype, mode, p)] for p in ("unshared-torch", "unfold+bmm", "jax")}
        want.append([case, dtype, mode, row["median ms"], other["unshared-torch"]["median ms"],
                     other["unfold+bmm"]["median ms"], other["jax"]["median ms"], f"{row['time/floor']}x",
                     f"{float(other['unfold+bmm']['median ms']) / float(row['median ms']):.1f}x",
                     f"{row['peak/weight']}, {other['unfold+bmm']['peak/weight']}"])
    assert [list(r.values()) for r in readme] == want


def test_cuda_prose_is_the_recorded_run():
    rates = re.search(r"float32 ([\d.]+) TFLOP/s, bfloat16 ([\d.]+) TFLOP/s \(float32 with TF32 allowed\); "
                      r"copy bandwidth (\d+) GB/s", CUDA_TEXT)
    date = re.search(r"^- date: (\d{4}-\d\d-\d\d)T", CUDA_TEXT, re.M).group(1)
    assert "- device: NVIDIA H200 (cuda:0)" in CUDA_TEXT
    said(f"measured with it on {date} on an NVIDIA H200 (measured {rates.group(1)} TFLOP/s TF32 and "
         f"{rates.group(2)} TFLOP/s bfloat16 matmul, {rates.group(3)} GB/s copy")
    step, dtypes = "forward+backward", ("float32", "bfloat16")
    l4 = [("L4-256", d, step) for d in dtypes]
    unfold = [gpu(*k, "unfold+bmm", "unshared-triton speed-up") for k in l4]
    memory = [gpu(*k, "unfold+bmm", "peak MiB") / gpu(*k, "unshared-triton", "peak MiB") for k in l4]
    assert span(memory) == f"{memory[0]:.0f}"
    said(f"(a training step of L4 at batch 256 on an H200: {span(unfold)}x faster than `unfold` + `bmm`)")
    said(f"a training step with the Triton kernels takes {gpu(*l4[0], 'unshared-triton', 'median ms'):.1f} ms in "
         f"float32 and {gpu(*l4[1], 'unshared-triton', 'median ms'):.1f} ms in bfloat16: {span(unfold)}x faster "
         f"than unfold+bmm with a {memory[0]:.0f}th of its transient memory, and "
         f"{span([gpu(*k, 'unshared-torch', 'unshared-triton speed-up') for k in l4])}x faster than our PyTorch "
         f"backend. It is still {span([gpu(*k, 'unshared-triton', 'time/floor') for k in l4])}x the roofline floor")
    rate = {op: [float(OPS[("L4-256", d, "triton", op)]["TFLOP/s"]) for d in dtypes] for op in ("forward", "input_grad")}
    said(f"the forward runs at {span(rate['forward'])} TFLOP/s and the input gradient (a gather over the kernel "
         f"offsets that reach each input position, {9 * 9} short products at L4) at {span(rate['input_grad'])} TFLOP/s")
    small = [gpu(c, d, step, "unshared-triton", "median ms") for (c, d, m, p) in CUDA
             if p == "unshared-triton" and m == step and c != "L4-256"]
    assert len(small) == 10 and f"{min(small):.0f}" == "2" and f"{max(small):.1f}" == "2.6"
    said("At batch 32 and on the smaller L5/L6 layers every step takes 2-2.6 ms whatever its size")
    from harness.cases import CASES
    assert CASES["L4-256"].flops(step) > 150 * CASES["L6-32"].flops(step)
    said("(L6 at batch 32 does less than a 150th of the work of L4 at 256)")


def test_distributed_table_is_the_recorded_run():
    path = cited("distributed-")
    rows = markdown_table(path.read_text(), "| set-up | images per step")
    readme = markdown_table(README, "| set-up | images per step |")
    mb = lambda text: f"{float(text.split()[0]):.1f} MB"  # noqa: E731
    want = [[r["set-up"].replace("(L4-L6)", "on L4-L6"), r["images per step (all ranks)"], mb(r["L4-L6 bytes sent"]),
             mb(r["all bytes sent"]), f"{float(r['step time s'].split()[0]):.1f} s"] for r in rows]
    assert [list(r.values()) for r in readme] == want
    by = {r["set-up"].split()[0]: r for r in rows}
    ratio = float(by["FSDP2"]["L4-L6 bytes sent"].split()[0]) / float(by["PositionParallel"]["L4-L6 bytes sent"].split()[0])
    said(f"PositionParallel sends 1/{ratio:.0f} of FSDP2's bytes for L4-L6")
    said(f"trains fewer images per second than DDP ({by['PositionParallel']['images/s']} against {by['DDP']['images/s']})")


# ----------------------------------------------------------------------------- installs, tests, counts

def test_install_table_is_the_recorded_measurement():
    text = (RESULTS / "install-sizes.md").read_text()
    date = re.search(r"^- date: (\S+)$", text, re.M).group(1)
    machine = re.search(r"^- machine: (.+), Python (\S+)$", text, re.M).groups()
    said(f"What `make test` installs, measured on {date} ({machine[0]}, Python {machine[1]}) by `make install-sizes`")
    table = text[text.index("| step |"):text.index("\n\n", text.index("| step |"))]
    assert table in README
    said(re.search(r"^So `make demo`.*$", text, re.M).group(0))


def test_suite_time_is_the_recorded_run():
    record = dict(line.split(": ", 1) for line in (ROOT / "docs" / "test-suite.txt").read_text().splitlines())
    assert record["command"] == "python -m pytest -q"
    cores = re.search(r", (\d+) cores,", record["machine"]).group(1)
    load = record["load average (1, 5, 15 min) at the start"].split()[0]
    said(f"the last record: {record['wall time']} on {cores} cores ({record['date']}, load average {load} at the "
         f"start; {record['result']})")


def test_counts_that_follow_from_the_layers():
    from unshared.models import DeepFace
    banks, weights = 55 * 55, 16 * 16 * 9 * 9
    said(f"55 x 55 = {banks:,} filter banks of {weights:,} weights, {banks * weights:,} in all, plus a bias per "
         f"channel and position (16 x 55 x 55 = {16 * 55 * 55:,}), hence {banks * weights + 16 * 55 * 55:,}")
    net = DeepFace(device="meta")
    total = sum(p.numel() for p in net.parameters())
    said(f"# Taigman et al. 2014: {total:,} parameters")
    said(f"(L4 alone has {net.trunk[5].weight.numel() / 1e6:.1f}M weights)")
    assert re.search(r'^requires-python = ">=3\.10"$', (ROOT / "pyproject.toml").read_text(), re.M)
    said("Both need only Python 3.10+")
