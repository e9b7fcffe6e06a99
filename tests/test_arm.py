"""The portable kernels on Linux aarch64 (issue 41): csrc/ cross-compiled with Debian's
``gcc-aarch64-linux-gnu`` and run under ``qemu-user`` (``qemu-aarch64-static``).

The program is ``csrc/tests/portable_check.c``: small random 1d and 2d layers (strides, dilations,
one-sided padding, groups, channels-last, shared banks, a batch of one, a kernel past the input),
float32 and float64, every path and both filter layouts, forward and both gradients through the
library's own entry points, against plain loops written in C; non-zero exit on any mismatch. It
links the library's sources with the portable kernels only (``LC_PORTABLE_ONLY``, what every CPU
other than x86-64 builds), statically for aarch64 so that qemu needs no sysroot. The same program
built natively checks the check itself on any machine with a C compiler. Skipped, with the reason,
where the compiler or qemu is missing.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
PROGRAM = CSRC / "tests" / "portable_check.c"
SOURCES = [str(PROGRAM), str(CSRC / "dispatch.c"), str(CSRC / "cpu_portable.c")]
FLAGS = ["-O2", "-std=gnu11", "-DLC_PORTABLE_ONLY"]
SYSROOT = Path("/usr/aarch64-linux-gnu")  # Debian's libc6-dev-arm64-cross, for a dynamic build
EM_AARCH64 = 183  # e_machine of an ELF file for aarch64


def _build(compiler: str, output: Path, *extra: str) -> subprocess.CompletedProcess:
    """The check and the library's sources, portable kernels only (at a low priority where ``nice`` exists)."""
    command = [compiler, *FLAGS, *extra, *SOURCES, "-pthread", "-lm", "-o", str(output)]
    return subprocess.run(["nice", *command] if shutil.which("nice") else command, capture_output=True, text=True,
                          timeout=300)


def _passed(run: subprocess.CompletedProcess):
    assert run.returncode == 0 and "FAIL" not in run.stdout, (run.stdout + run.stderr)[-6000:]
    assert "passed:" in run.stdout and "0 failures" in run.stdout, run.stdout[-3000:]


def test_portable_kernels_match_plain_loops_natively(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or os.name == "nt":
        pytest.skip("needs a C compiler (cc, gcc or clang) on a POSIX system")
    program = tmp_path / "portable_check"
    built = _build(compiler, program)
    assert built.returncode == 0, built.stderr[-6000:]
    _passed(subprocess.run([str(program)], capture_output=True, text=True, timeout=120))


def test_portable_kernels_match_plain_loops_on_aarch64_under_qemu(tmp_path):
    compiler = shutil.which("aarch64-linux-gnu-gcc")
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if compiler is None or qemu is None:
        pytest.skip("needs aarch64-linux-gnu-gcc (Debian's gcc-aarch64-linux-gnu) and qemu-aarch64-static "
                    f"(qemu-user-static) on PATH; found {compiler=}, {qemu=}")
    program = tmp_path / "portable_check_aarch64"
    built = _build(compiler, program, "-static")
    command = [qemu, str(program)]
    if built.returncode != 0 and SYSROOT.is_dir():  # no static libc: a dynamic build, run with the sysroot
        static_error = built.stderr
        built = _build(compiler, program)
        assert built.returncode == 0, (static_error + built.stderr)[-6000:]
        command = [qemu, "-L", str(SYSROOT), str(program)]
    assert built.returncode == 0, built.stderr[-6000:]
    header = program.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64, "not an aarch64 ELF"
    _passed(subprocess.run(command, capture_output=True, text=True, timeout=300))
