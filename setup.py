"""Builds the compiled CPU kernels (``csrc/``) of the ``cpu`` backend; everything else is in
pyproject.toml.

The kernels are plain C (no Python or PyTorch headers: no torch is needed to build them), loaded
with ctypes from ``unshared/_cpu_kernels*.so``. They are optional: without a working C compiler the
build warns and unshared installs without them; ``backend="auto"`` then uses the PyTorch backend.
The x86-64 instruction sets (AVX2+FMA, AVX-512) are compiled per function and chosen at run time;
nothing is tuned to the build machine (no ``-march=native``).
"""
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = ["csrc/dispatch.c", "csrc/cpu_portable.c", "csrc/cpu_avx2.c", "csrc/cpu_avx512.c", "csrc/peak.c"]
HEADERS = ["csrc/unshared_cpu.h", "csrc/kernels.h", "csrc/kernels_ig.h", "csrc/kernels_ig_scatter.h", "csrc/kernels_fwd_batch.h", "csrc/kernels_rows.h", "csrc/kernels_rows_ig.h", "csrc/layouts.h", "csrc/isa.h", "csrc/threads.h"]
WARNING = ("unshared: the compiled CPU kernels were not built ({}); unshared works without them "
           "(backend='auto' uses the PyTorch backend). Install a C compiler and reinstall for them.")


class OptionalBuildExt(build_ext):
    """``build_ext`` that warns instead of failing: the kernels are an optional speed-up."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # no compiler at all (e.g. DistutilsPlatformError)
            self.warn(WARNING.format(error))

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:  # compile or link errors
            self.warn(WARNING.format(error))

    def get_export_symbols(self, ext):
        return []  # a plain shared library for ctypes: no PyInit_ function to export


unix = sys.platform != "win32"
setup(
    ext_modules=[Extension(
        "unshared._cpu_kernels", sources=SOURCES, depends=HEADERS, optional=True,
        extra_compile_args=["-O3", "-std=gnu11", "-fvisibility=hidden"] if unix else [],
        extra_link_args=["-pthread"] + (["-ldl"] if sys.platform.startswith("linux") else []) if unix else [],
    )],
    cmdclass={"build_ext": OptionalBuildExt},
)
