"""A failed build of the compiled CPU kernels fails the suite: where the C compiler that the
package build uses exists, the kernels must be built and load (the cpu backend's tests would
otherwise all be skipped). Skipped only on a machine without that compiler."""
import os
import shlex
import shutil
import sysconfig

import pytest

from unshared.backends import cpu


def build_compiler() -> str | None:
    """The C compiler that setuptools would call (``$CC``, else Python's configured ``CC``), if it exists."""
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(shlex.split(command)[0])


def test_the_kernels_are_built_where_a_compiler_exists():
    compiler = build_compiler()
    if compiler is None:
        pytest.skip("no C compiler: the package installs without the compiled kernels, as documented")
    assert cpu.available_isas(), (f"{compiler} exists but {cpu._REASON}; rebuild them: "
                                  "python setup.py build_ext --inplace (or make .venv/test.stamp)")
    assert cpu.library_path() is not None and "portable" in cpu.available_isas()
