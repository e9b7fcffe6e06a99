"""What ``make demo`` and ``make test`` install: download and installed size per step, measured.

Run with the interpreter of an environment made by ``make test`` (``make install-sizes``): it
reads the installed distributions of that environment (the installed size of each is the sum of
the sizes of its files), groups them by the step that brings them (PyTorch first, then the
``demo`` extra, then the rest of the ``test`` extra: Triton, the ONNX packages, the test tools),
and measures each download as the size of the wheel that ``pip download --no-deps`` fetches for
the installed version (kept in ``--wheels DIR`` between runs). Writes a Markdown report.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata as metadata
import platform
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

#: The steps of ``make test``, in order: (row, what it names, the requirements that bring it).
STEPS = [
    ("first", "PyTorch {torch} (CPU build) and its dependencies", ["torch"]),
    ("`demo` extra (in `test` too)", "scikit-learn, scikit-image, matplotlib, tqdm, with SciPy, NumPy, Pillow and others",
     ["unshared[demo]"]),
    ("`test` extra, beyond `demo`", "Triton {triton}, which runs the GPU kernels in its interpreter on a CPU", ["triton"]),
    ("", "onnx, onnxruntime, onnxscript and their dependencies, for the ONNX export tests",
     ["onnx", "onnxruntime", "onnxscript"]),
    ("", "Opacus {opacus} and opt_einsum, for the differential-privacy tests", ["opacus"]),
    ("", "pytest, hypothesis, safetensors and their dependencies", ["unshared[test]"]),
]


def closure(requirements: list[str]) -> set[str]:
    """The installed distributions that ``requirements`` bring, with their dependencies (markers
    evaluated here; extras followed)."""
    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency this platform does not install
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(sub)
    return {name for name, _ in seen} - {"unshared"}


def installed_bytes(name: str) -> int:
    dist = metadata.distribution(name)
    total = 0
    for file in dist.files or []:
        path = Path(dist.locate_file(file))
        if path.is_file():
            total += path.stat().st_size
    return total


def wheel_bytes(name: str, wheels: Path) -> int:
    """The size of the wheel of the installed version (downloaded into ``wheels`` if not there)."""
    version = metadata.version(name)
    stem = canonicalize_name(name).replace("-", "_")
    found = [w for w in wheels.glob("*.whl") if canonicalize_name(w.name.split("-")[0]).replace("-", "_") == stem
             and w.name.split("-")[1] == version]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(wheels), f"{name}=={version}"], check=True)
        return wheel_bytes(name, wheels)
    return found[0].stat().st_size


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 10e6 else f"{n / 1e6:,.0f} MB"


def report(wheels: Path) -> str:
    done: set[str] = set()
    rows, totals, contents = [], [], []
    versions = {name: metadata.version(name) for name in ("torch", "triton", "opacus")}
    for row, what, requirements in STEPS:
        names = sorted(closure(requirements) - done)
        done |= set(names)
        download = sum(wheel_bytes(n, wheels) for n in names)
        installed = sum(installed_bytes(n) for n in names)
        totals.append((download, installed))
        rows.append(f"| {row} | {what.format(**versions)} | {megabytes(download)} | {megabytes(installed)} |")
        contents.append(f"- {row or 'then'}: {', '.join(f'{n} {metadata.version(n)}' for n in names)}")
    demo = [sum(t[i] for t in totals[:2]) for i in (0, 1)]
    test = [sum(t[i] for t in totals) for i in (0, 1)]
    return "\n".join([
        "# What `make demo` and `make test` install",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "- download: the size of the wheel `pip download --no-deps` fetches for each installed version;"
        " installed: the sizes of each distribution's installed files (`importlib.metadata`)",
        "- command: `make install-sizes` (`python benchmarks/install_sizes.py` in the environment of `make test`)",
        "",
        "| step | packages | download | installed |",
        "|---|---|---:|---:|",
        *rows,
        "",
        f"So `make demo` fetches about {demo[0] / 1e9:.2f} GB and installs {demo[1] / 1e9:.2f} GB; "
        f"`make test` about {test[0] / 1e9:.2f} GB and {test[1] / 1e9:.2f} GB.",
        "",
        "The packages of each step:",
        "",
        *contents,
        "",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/install_sizes.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, default=Path("build/wheels"), help="where the wheels are kept")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/install-sizes.md"))
    args = parser.parse_args(argv)
    args.wheels.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report(args.wheels))
    print(args.output.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
