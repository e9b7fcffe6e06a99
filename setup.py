"""Builds the compiled CPU kernels (``csrc/``) of the ``cpu`` backend; everything else is in
pyproject.toml.

The kernels are a plain C shared library (no Python or PyTorch headers: no torch is needed to
build them), loaded with ctypes from ``unshared/_cpu_kernels.so`` (``.dll`` on Windows). Since it
links neither Python nor libtorch, the wheel is tagged ``py3-none-<platform>``: one wheel per
platform serves every Python and PyTorch version. The x86-64 instruction sets (AVX2+FMA, AVX-512)
are compiled per function and chosen at run time; nothing is tuned to the build machine (no
``-march=native``).

The kernels are optional: without a working C compiler the build warns and unshared installs
without them (``backend="auto"`` then uses the PyTorch backend), unless
``UNSHARED_REQUIRE_KERNELS=1`` (release builds), which makes a failed build an error. Either way
the build writes ``unshared/_cpu_kernels_build.json`` next to where the library goes: whether it
was built and, if not, the compiler's own output (``unshared info`` shows it). The sources compile
in parallel (``UNSHARED_BUILD_JOBS``, default: one per core), without debug information.
"""
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext
from setuptools.errors import ExecError

SOURCES = ["csrc/dispatch.c", "csrc/cpu_portable.c", "csrc/cpu_avx2.c", "csrc/cpu_avx512.c", "csrc/peak.c", "csrc/sparse.c"]
HEADERS = ["csrc/unshared_cpu.h", "csrc/kernels.h", "csrc/kernels_ig.h", "csrc/kernels_wg.h", "csrc/kernels_ig_scatter.h", "csrc/kernels_fwd_batch.h", "csrc/kernels_rows.h", "csrc/kernels_rows_ig.h", "csrc/layouts.h", "csrc/isa.h", "csrc/threads.h", "csrc/sparse_checks.h"]
LIBRARY = "_cpu_kernels" + (".dll" if sys.platform == "win32" else ".so")  # as unshared/backends/cpu.py looks for it
RECORD = "_cpu_kernels_build.json"
WARNING = ("unshared: the compiled CPU kernels were not built ({}); unshared works without them "
           "(backend='auto' uses the PyTorch backend). Install a C compiler and reinstall for them.")
REQUIRED = os.environ.get("UNSHARED_REQUIRE_KERNELS", "").strip() not in ("", "0")
KEEP = 6000  # characters of the compiler's output kept in the record
# compiler processes at once (the sources are independent; UNSHARED_BUILD_JOBS=1: one at a time)
JOBS = max(1, int(os.environ.get("UNSHARED_BUILD_JOBS") or min(len(SOURCES), os.cpu_count() or 1)))


class KernelsRequired(RuntimeError):
    """The kernels were not built although ``UNSHARED_REQUIRE_KERNELS`` asks for them."""


class KernelBuild(build_ext):
    """``build_ext`` for a plain ctypes library: named without Python's ABI suffix, exporting no
    ``PyInit_`` function; a failure warns (or raises with ``UNSHARED_REQUIRE_KERNELS=1``) and is
    recorded with the compiler's output."""

    def run(self):
        self._output = []
        try:
            super().run()
        except KernelsRequired:
            raise
        except Exception as error:  # no compiler at all (e.g. DistutilsPlatformError)
            self._failed(error)

    def build_extension(self, ext):
        if self.compiler.compiler_type == "unix":  # (MSVC's own spawn sets up its environment)
            # keeps the compiler's output for the record (``call`` in newer setuptools, ``spawn`` before)
            self.compiler.spawn = self._spawn
            if hasattr(self.compiler, "call"):
                self.compiler.call = self._call
            self.compiler.compile = self._parallel(self.compiler.compile)
        try:
            super().build_extension(ext)
        except Exception as error:  # compile or link errors
            self._failed(error)
        else:
            self._record(built=True, compiler=self.compiler.compiler_type)

    @staticmethod
    def _parallel(compile):
        """``compile`` running one compiler per source, ``JOBS`` at a time (objects in source order)."""
        def run(sources, *args, **kwargs):
            if JOBS < 2 or len(sources) < 2:
                return compile(sources, *args, **kwargs)
            with ThreadPoolExecutor(JOBS) as pool:
                parts = list(pool.map(lambda source: compile([source], *args, **kwargs), sources))
            return [name for part in parts for name in part]
        return run

    def _call(self, cmd, env=None, **kwargs):
        """The compiler's (or linker's) command, its output echoed and kept for the record;
        ``CalledProcessError`` on failure, as setuptools' own ``call`` raises."""
        cmd = [os.fspath(part) for part in cmd]
        print(" ".join(cmd), flush=True)
        try:
            done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  errors="replace")
        except OSError as error:
            self._output.append(f"$ {' '.join(cmd)}\n{error}\n")
            raise
        if done.stdout:
            print(done.stdout, end="", flush=True)
        self._output.append(f"$ {' '.join(cmd)}\n{done.stdout}")
        if done.returncode:
            raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout)

    def _spawn(self, cmd, env=None, **kwargs):
        """``_call`` for older setuptools (no ``CCompiler.call``), whose callers expect ``ExecError``."""
        try:
            self._call(cmd, env=env)
        except (OSError, subprocess.CalledProcessError) as error:
            raise ExecError(f"command {cmd[0]!r} failed: {error}") from error

    def _failed(self, error):
        self._record(built=False, error=str(error))
        if REQUIRED:
            raise KernelsRequired(f"UNSHARED_REQUIRE_KERNELS is set and the compiled CPU kernels were not built: "
                                  f"{error}\n{''.join(self._output)[-KEEP:]}") from error
        self.warn(WARNING.format(error))

    def _record(self, **fields):
        record = {**fields, "platform": f"{sys.platform} {platform.machine()}"}
        if not fields["built"]:
            record["output"] = "".join(getattr(self, "_output", []))[-KEEP:]
        path = self._record_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as file:
            json.dump(record, file, indent=1)

    def _record_path(self):
        return os.path.join(os.path.dirname(self.get_ext_fullpath(self.extensions[0].name)), RECORD)

    def copy_extensions_to_source(self):  # in-place (editable) builds: the record goes beside the library
        super().copy_extensions_to_source()
        inplace, regular = self._get_inplace_equivalent(self.get_finalized_command("build_py"), self.extensions[0])
        built = os.path.join(os.path.dirname(regular), RECORD)
        if os.path.exists(built):
            self.copy_file(built, os.path.join(os.path.dirname(inplace), RECORD), level=self.verbose)

    def get_ext_filename(self, fullname):
        return os.path.join(*fullname.split(".")[:-1], LIBRARY)

    def get_export_symbols(self, ext):
        return []  # a plain shared library for ctypes: no PyInit_ function to export


class PlatformWheel(bdist_wheel):
    """Tags the wheel ``py3-none-<platform>``: the library links no Python (ctypes loads it)."""

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


unix = sys.platform != "win32"
setup(
    ext_modules=[Extension(
        "unshared._cpu_kernels", sources=SOURCES, depends=HEADERS, optional=True,
        # -g0: no debug information (Python's own CFLAGS ask for it): a fifth of the size
        extra_compile_args=["-O3", "-std=gnu11", "-fvisibility=hidden", "-g0"] if unix else [],
        extra_link_args=["-pthread"] + (["-ldl"] if sys.platform.startswith("linux") else []) if unix else [],
    )],
    cmdclass={"build_ext": KernelBuild, "bdist_wheel": PlatformWheel},
)
