"""The compiled CPU kernels under AddressSanitizer and UndefinedBehaviorSanitizer (issue 19).

csrc/ is compiled with ``-fsanitize=address,undefined`` into a temporary folder; a subprocess with
the ASan runtime preloaded loads that build (``UNSHARED_CPU_LIBRARY``) and makes the calls of
tests/sanitizer_calls.py: adversarial layers and a random sweep on every instruction set against
the reference, serial and threaded, and calls that lie to the kernels. Any sanitizer report fails
the test. Skipped, with the reason, where the compiler has no sanitizers (failed instead in CI).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent / "csrc"
FLAGS = ["-O0", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-std=gnu11", "-fPIC"]  # -O0: the sanitizers see every access, and it compiles 5x faster than -O1
REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "SUMMARY: UndefinedBehavior")


def _skip(reason: str):
    """Skip, except in CI (``CI`` set), which must run this test."""
    (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


def _library(compiler: str, name: str) -> str | None:
    found = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return os.path.realpath(found) if os.path.isabs(found) and os.path.exists(found) else None


def _sanitizer_toolchain() -> tuple[str, str]:
    """The compiler and the libraries to preload (the ASan runtime first, then libstdc++, whose
    ``__cxa_throw`` ASan must find when it starts: PyTorch throws C++ exceptions); skips when there
    is no ASan runtime."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None or not sys.platform.startswith("linux"):
        _skip("needs Linux and gcc (or cc) with AddressSanitizer")
    runtime = _library(compiler, "libasan.so")
    if runtime is None:
        _skip(f"{compiler} has no AddressSanitizer runtime (-print-file-name=libasan.so finds none)")
    return compiler, " ".join(filter(None, [runtime, _library(compiler, "libstdc++.so")]))


def _build(compiler: str, folder: Path) -> Path:
    """csrc/ compiled with the sanitizers, one process per source file (they run side by side)."""
    objects, jobs = [], []
    for source in sorted(CSRC.glob("*.c")):
        objects.append(folder / (source.stem + ".o"))
        jobs.append(subprocess.Popen([compiler, *FLAGS, "-c", str(source), "-o", str(objects[-1])],
                                     stderr=subprocess.PIPE, text=True))
    errors = [job.communicate()[1] for job in jobs if job.wait()]
    if errors and "sanitize" in errors[0]:
        _skip(f"{compiler} cannot build with -fsanitize=address,undefined: {errors[0][-500:]}")
    assert not errors, errors[0][-3000:]
    library = folder / "_cpu_kernels_sanitized.so"
    subprocess.run([compiler, "-shared", "-fsanitize=address,undefined", "-pthread", "-o", str(library),
                    *map(str, objects)], check=True)
    return library


def test_kernels_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    compiler, runtime = _sanitizer_toolchain()
    library = _build(compiler, tmp_path)
    env = {**os.environ, "LD_PRELOAD": runtime, "UNSHARED_CPU_LIBRARY": str(library),
           # Python itself leaks by design at exit; the kernels' own frees are checked by ASan
           "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    env.pop("UNSHARED_CPU_ISA", None)
    run = subprocess.run([sys.executable, str(HERE / "sanitizer_calls.py")], env=env, capture_output=True,
                         text=True, timeout=600)
    reports = [line for line in run.stderr.splitlines() if any(r in line for r in REPORTS)]
    assert not reports and run.returncode == 0, run.stderr[-6000:]
    assert "sanitizer calls:" in run.stdout and "refused" in run.stdout, run.stdout[-2000:]
