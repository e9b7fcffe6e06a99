"""The benchmark pages, generated from the recorded results files of ``benchmarks/results/``
while the site builds, so that a page never says other than its file.

Each page calls ``page(name, ...)`` from an executed block: the run's conditions (machine, date,
command), a summary table, plots (the speed-up over the ``unfold`` recipe and the distance from
the machine's floor, per case) and the whole file, folded. ``tests/test_docs_records.py`` checks
the summaries against the files as ``tests/test_records.py`` checks the README.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"

# Files written before the harness recorded its command line: the command as the README gave it
# with the table (git history of README.md), or None where it named none.
FEW = ("python benchmarks/bench.py --cases genomics-1d-32,genomics-1d-wide-32,alltnn-1-16,lc-resnet-16,wide-64,"
       "L4-8,L5-8,L6-8,cifar-128 --providers unshared-cpu,unfold+einsum --budget 1 --min-reps 3 --max-reps 8")
COMMANDS = {
    "cpu-2026-11-21.md": "python benchmarks/bench_cpu.py",        # the script's name before bench.py
    "cpu-2026-11-22.md": "python benchmarks/bench_cpu.py",
    "cpu-2026-11-29.md": "python benchmarks/bench.py",
    "cpu-2026-12-02.md": "python benchmarks/bench.py",
    "cpu-2026-12-02-fewchannel.md": FEW,
    "cpu-2026-12-04-fewchannel.md": FEW,
    "layouts-cpu-2026-12-04.md": "python benchmarks/bench.py --cases L4-8,L5-8,L6-8,cifar-128,lc-resnet-16,"
                                 "wide-64,genomics-1d-32,genomics-1d-wide-32,alltnn-1-16 --providers "
                                 "unshared-cpu,unshared-cpu-contiguous --budget 1 --min-reps 3 --max-reps 8",
    "cuda-2026-11-30-nvidia-h200.md": "python benchmarks/gpu_check.py --out DIR",
    "avx2-cpu-2026-12-07.md": "python benchmarks/bench.py --budget 1",  # its notes say so
    "cpu-2026-12-07.md": "python benchmarks/bench.py --budget 1 --providers unshared-cpu,unshared-cpu-bias,"
                         "unshared-torch,unfold+einsum --output benchmarks/results/cpu-2026-12-07.md",
}


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


@dataclass
class Record:
    name: str
    text: str

    @property
    def path(self) -> Path:
        return RESULTS / self.name

    @property
    def title(self) -> str:
        return self.text.splitlines()[0].lstrip("# ").strip()

    @property
    def header(self) -> dict[str, str]:
        return dict(re.findall(r"^- ([^:\n]+): (.*)$", self.text, re.M))

    @property
    def date(self) -> str:
        found = self.header.get("date") or re.search(r"\((\d{4}-\d\d-\d\d)", self.title).group(1)
        return found[:10]

    @property
    def machine(self) -> str:
        h = self.header
        if "device" in h:
            return f"{h['device']}; host: {h.get('host', 'not recorded')}"
        return h["machine"]

    @property
    def command(self) -> str | None:
        found = self.header.get("command")
        if found:
            return found.strip().split("`")[1] if found.startswith("`") else found
        return COMMANDS.get(self.name)


def record(name: str) -> Record:
    return Record(name, (RESULTS / name).read_text())


def conditions(rec: Record) -> str:
    command = (f"`{rec.command}`" if rec.command else
               "not recorded in the file (it predates the harness's command line)")
    return (f"!!! info \"{rec.title}, {rec.date}\"\n"
            f"    - **machine:** {rec.machine}\n"
            f"    - **date:** {rec.date}\n"
            f"    - **command:** {command}\n"
            f"    - **file:** `benchmarks/results/{rec.name}` (in full at the end of this section)\n")


def folded(rec: Record) -> str:
    body = rec.text.split("\n", 1)[1].strip("\n")
    body = "\n".join(("    " + line) if line else "" for line in body.splitlines())
    return f'??? note "The whole file: benchmarks/results/{rec.name}"\n\n{body}\n'


# ----------------------------------------------------------------------------- kernel benchmarks

KEYS = ("case", "dtype", "mode")


def _baseline(providers: list[str]) -> str:
    """The provider the speed-ups are shown against: the unfold recipe, or else the last one."""
    return next((p for p in providers if p.startswith("unfold+")), providers[-1])


def _floor(row: dict) -> str:
    """A row's time over the machine's floor: ``x physical floor`` (the FMA peak's), or in files
    recorded before it, ``time/floor`` (the matmul rate's)."""
    return row.get("x physical floor") or row["time/floor"]


def _runs(rec: Record) -> tuple[list[dict], str]:
    """The main table's rows and the provider the speed-ups are relative to."""
    prefix = "| case | batch | dtype | mode |" if "| case | batch | dtype |" in rec.text else "| case | batch | mode |"
    rows = markdown_table(rec.text, prefix)
    reference = next(k for k in rows[0] if k.endswith(" speed-up")).removesuffix(" speed-up")
    return rows, reference


def summary(rec: Record, providers: list[str] | None = None) -> list[list[str]]:
    """One row per (case, dtype, mode): each provider's median, the reference's time / floor, the
    speed-up over the unfold recipe, peak memory / weight of the reference and of the recipe."""
    rows, ours = _runs(rec)
    providers = providers or list(dict.fromkeys(r["provider"] for r in rows))
    unfold = _baseline(providers)
    by = {tuple(r.get(k, "") for k in KEYS) + (r["provider"],): r for r in rows}
    out = []
    for key in dict.fromkeys(tuple(r.get(k, "") for k in KEYS) for r in rows):
        mine, recipe = by[key + (ours,)], by.get(key + (unfold,))
        case, dtype, mode = key
        line = [f"{case}", *([dtype] if dtype else []), mode]
        line += [by[key + (p,)]["median ms"] if key + (p,) in by else "-" for p in providers]
        line += [f"{_floor(mine)}x",
                 f"{recipe[f'{ours} speed-up']}x" if recipe else "-",
                 f"{mine['peak/weight']}, {recipe['peak/weight']}" if recipe else "-"]
        out.append(line)
    return out


def summary_table(rec: Record, providers: list[str] | None = None) -> str:
    rows, ours = _runs(rec)
    providers = providers or list(dict.fromkeys(r["provider"] for r in rows))
    unfold = _baseline(providers)
    dtype = ["dtype"] if "dtype" in rows[0] else []
    names = ["case", *dtype, "mode", *(f"{p} ms" for p in providers), f"{ours} / floor",
             f"speed-up over {unfold}", f"peak memory / weight ({ours}, {unfold})"]
    align = ["---"] * (2 + len(dtype)) + ["---:"] * (len(names) - 2 - len(dtype))
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in summary(rec, providers)]
    return "\n".join(lines) + "\n"


def plots(rec: Record) -> str:
    """Two panels per file: the reference provider's speed-up over the unfold recipe, and every
    provider's time over the machine's floor, per case and mode."""
    from figures import plt, svg

    rows, ours = _runs(rec)
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    unfold = _baseline(providers)
    keys = list(dict.fromkeys(tuple(r.get(k, "") for k in KEYS) for r in rows))
    by = {tuple(r.get(k, "") for k in KEYS) + (r["provider"],): r for r in rows}
    labels = [" ".join(x for x in (case, dtype, "fwd+bwd" if mode == "forward+backward" else "fwd") if x)
              for case, dtype, mode in keys]
    height = 0.9 + 0.22 * len(keys)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, height), sharey=True, layout="constrained")
    ys = range(len(keys))
    speedups = [float(by[k + (unfold,)][f"{ours} speed-up"]) if k + (unfold,) in by else 0 for k in keys]
    left.barh(list(ys), speedups, color="tab:blue")
    left.axvline(1, color="0.3", lw=0.8)
    left.set_xscale("log")
    left.set_yticks(list(ys), labels, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel(f"{unfold} time / {ours} time (log; > 1: {ours} is faster)")
    left.set_title(f"speed-up of {ours} over {unfold}", fontsize=9)
    for y, value in zip(ys, speedups):
        if value:
            left.text(value, y, f" {value:g}x", va="center", fontsize=6)
    width = 0.8 / len(providers)
    cmap = plt.get_cmap("tab10")
    for n, provider in enumerate(providers):
        values = [float(_floor(by[k + (provider,)])) if k + (provider,) in by else 0 for k in keys]
        right.barh([y - 0.4 + width * (n + 0.5) for y in ys], values, height=width, color=cmap(n), label=provider)
    right.axvline(1, color="0.3", lw=0.8)
    right.set_xscale("log")
    right.set_xlabel("time / the machine's floor (log; 1 = the physical limit)")
    right.set_title("distance from the floor", fontsize=9)
    right.legend(fontsize=7, loc="lower right")
    return svg(fig, f"{rec.name}: the speed-up of {ours} over {unfold} (left) and each provider's time "
                    f"over the floor (right), per case and mode.")


def kernel_page(name: str, providers: list[str] | None = None) -> str:
    rec = record(name)
    return "\n".join([conditions(rec), summary_table(rec, providers), plots(rec), folded(rec)])


def file_page(name: str) -> str:
    """A results file without per-case kernel timings: its conditions and its tables."""
    rec = record(name)
    return "\n".join([conditions(rec), rec.text.split("\n", 1)[1].strip("\n").replace("\n- ", "\n- ", 0) + "\n"])


def suite_record() -> str:
    """``docs/test-suite.txt`` (written by ``make test-time``) as a table."""
    lines = (ROOT / "docs" / "test-suite.txt").read_text().splitlines()
    rows = [line.split(": ", 1) for line in lines if ": " in line]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"
