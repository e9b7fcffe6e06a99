"""Time one run of the test suite (``make test``'s command) and record it with the machine's state.

``make test-time`` runs ``python -m pytest -q`` from the repository root (extra arguments are
passed on), and writes the date, the machine, its load average at the start and at the end, the
pytest summary line and the wall time to ``--output`` (``docs/test-suite.txt``), from which the
README's line about the suite is taken (``tests/test_records.py`` checks it). Exits with pytest's
status, after writing the record.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^=* ?(\d+ \w+.*) in [\d.]+s.*$")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/suite_time.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "test-suite.txt")
    args, pytest_args = parser.parse_known_args(argv)
    command = [sys.executable, "-m", "pytest", "-q", *pytest_args]
    date, before = datetime.date.today().isoformat(), load()
    start = time.perf_counter()
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    sys.stdout.write(run.stdout[-5000:])
    sys.stderr.write(run.stderr[-5000:])
    lines = [m.group(1) for m in map(SUMMARY.match, run.stdout.splitlines()) if m]
    summary = lines[-1] if lines else f"no pytest summary (exit status {run.returncode})"
    args.output.write_text("\n".join([
        f"date: {date}",
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}",
        f"load average (1, 5, 15 min) at the start: {before}; at the end: {load()}",
        f"command: python -m pytest -q{''.join(' ' + a for a in pytest_args)}",
        f"result: {summary}",
        f"wall time: {round(seconds) // 60} min {round(seconds) % 60} s",
        "",
    ]))
    print(args.output.read_text())
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
