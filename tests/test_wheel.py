"""The package build (issue 41), fast checks: setup.py's wheel tag and library name, its build
record (built, or not with the compiler's output), the loader's library_path, the sdist manifest,
the cibuildwheel settings and the release workflow. The slow full check (sdist, wheel from the
sdist, auditwheel, install into a fresh environment, tests from outside the tree) is
.ci/wheel_check."""
import ctypes
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import setuptools
from setuptools import Extension
from setuptools.dist import Distribution

import unshared
from unshared.backends import cpu

ROOT = Path(__file__).resolve().parent.parent


def load_setup():
    """setup.py's namespace and the arguments it passes to setup(), without building anything."""
    captured = {}
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        namespace = runpy.run_path(str(ROOT / "setup.py"))
    finally:
        setuptools.setup = original
    return namespace, captured


SETUP, SETUP_ARGS = load_setup()


def command(name: str, ext_modules=None, **options):
    dist = Distribution({"name": "unshared", "version": "0", "cmdclass": SETUP_ARGS["cmdclass"],
                         "ext_modules": ext_modules if ext_modules is not None else SETUP_ARGS["ext_modules"]})
    cmd = SETUP_ARGS["cmdclass"][name](dist)
    for key, value in options.items():
        setattr(cmd, key, value)
    cmd.ensure_finalized()
    return cmd


def test_the_wheel_is_tagged_for_any_python_on_this_platform():
    python, abi, platform = command("bdist_wheel").get_tag()
    assert (python, abi) == ("py3", "none")
    assert platform == sysconfig.get_platform().replace("-", "_").replace(".", "_")


def test_setup_and_the_loader_agree_on_the_library_name():
    assert SETUP["LIBRARY"] == cpu.LIBRARY_NAME == "_cpu_kernels" + (".dll" if os.name == "nt" else ".so")
    assert command("build_ext").get_ext_filename("unshared._cpu_kernels") == os.path.join("unshared", cpu.LIBRARY_NAME)
    (ext,) = SETUP_ARGS["ext_modules"]
    assert ext.name == "unshared._cpu_kernels" and ext.optional
    assert sorted(ext.sources) == sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.c"))
    assert sorted(ext.depends) == sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.h"))


def test_the_loaded_library_has_no_abi_suffix():
    path = cpu.library_path()
    if path is None:
        pytest.skip("the compiled kernels are not built here")
    assert path.name == cpu.LIBRARY_NAME
    assert path.parent == Path(unshared.__file__).resolve().parent or os.environ.get("UNSHARED_CPU_LIBRARY")


def test_library_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UNSHARED_CPU_LIBRARY", str(tmp_path / "elsewhere.so"))
    assert cpu.library_path() == tmp_path / "elsewhere.so"
    monkeypatch.delenv("UNSHARED_CPU_LIBRARY")
    expected = Path(cpu.__file__).resolve().parent.parent / cpu.LIBRARY_NAME
    assert cpu.library_path() == (expected if expected.is_file() else None)


def build(tmp_path, sources: dict[str, str], monkeypatch, required=False):
    """build_ext of setup.py on these C sources into tmp_path; returns the build record."""
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(SETUP["KernelBuild"].run.__globals__, "REQUIRED", required)
    ext = Extension("pkg._cpu_kernels", sources=sorted(sources), optional=True,
                    extra_compile_args=["-O0", "-g0"] if os.name != "nt" else [])
    cmd = command("build_ext", [ext], build_lib=str(tmp_path / "lib"), build_temp=str(tmp_path / "tmp"))
    cmd.run()
    return json.loads((tmp_path / "lib" / "pkg" / SETUP["RECORD"]).read_text())


needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")


@needs_cc
def test_a_successful_build_is_recorded_and_loads(tmp_path, monkeypatch):
    record = build(tmp_path, {"a.c": "int one(void) { return 1; }\n",
                              "b.c": "int one(void); __attribute__((visibility(\"default\"))) int two(void) "
                                     "{ return one() + 1; }\n"}, monkeypatch)
    assert record["built"] is True and record["compiler"] == "unix"
    library = tmp_path / "lib" / "pkg" / SETUP["LIBRARY"]
    assert ctypes.CDLL(str(library)).two() == 2


@needs_cc
def test_a_failed_build_keeps_the_compilers_output(tmp_path, monkeypatch):
    record = build(tmp_path, {"bad.c": "#error the compiler says no\n"}, monkeypatch)
    assert record["built"] is False and "failed" in record["error"]
    assert "the compiler says no" in record["output"]
    assert not (tmp_path / "lib" / "pkg" / SETUP["LIBRARY"]).exists()


@needs_cc
def test_unshared_require_kernels_makes_a_failed_build_an_error(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="(?s)UNSHARED_REQUIRE_KERNELS.*the compiler says no"):
        build(tmp_path, {"bad.c": "#error the compiler says no\n"}, monkeypatch, required=True)


def test_the_installed_build_record_says_built():
    path = cpu.library_path()
    if path is None or os.environ.get("UNSHARED_CPU_LIBRARY"):
        pytest.skip("the compiled kernels are not built here, or come from elsewhere")
    record = json.loads((path.parent / SETUP["RECORD"]).read_text())
    assert record["built"] is True


def test_the_build_record_and_library_are_ignored_by_git():
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    paths = ["src/unshared/_cpu_kernels.so", "src/unshared/_cpu_kernels_build.json"]
    done = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, text=True, stdout=subprocess.PIPE)
    assert done.stdout.split() == paths


def test_the_sdist_manifest_holds_the_sources_and_no_build_output():
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "recursive-include csrc *.c *.h" in manifest
    for name in ("README.md", "LICENSE", "CHANGELOG.md"):
        assert name in manifest and (ROOT / name).is_file()
    assert re.search(r"global-exclude .*\*\.so.*_cpu_kernels_build\.json", manifest)


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_license_matches_pyproject():
    assert PYPROJECT["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_cibuildwheel_builds_one_wheel_per_platform_and_tests_it():
    cibw = PYPROJECT["tool"]["cibuildwheel"]
    assert cibw["build"] == "cp311-*"  # py3-none wheels: one interpreter per platform is enough
    for skipped in ("*-musllinux_*", "*-win32", "*_i686", "pp*"):
        assert skipped in cibw["skip"].split()
    assert cibw["environment"]["UNSHARED_REQUIRE_KERNELS"] == "1"
    assert "torch==2.13.0" in cibw["before-test"] and "whl/cpu" in cibw["before-test"]
    assert ".ci/wheel_check --smoke" in cibw["test-command"]
    assert cibw["linux"]["archs"] == ["x86_64", "aarch64"]
    assert cibw["macos"]["archs"] == ["x86_64", "arm64"]
    assert cibw["windows"]["archs"] == ["AMD64"]
    assert cibw["macos"]["environment"]["UNSHARED_REQUIRE_KERNELS"] == "1"


def test_the_release_workflow_is_well_formed():
    yaml = pytest.importorskip("yaml")
    path = ROOT / ".github" / "workflows" / "release.yml"
    workflow = yaml.safe_load(path.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert "release" in triggers
    jobs = workflow["jobs"]
    uses = {job: [step.get("uses", "") for step in spec["steps"]] for job, spec in jobs.items()}
    assert any(u.startswith("pypa/cibuildwheel@") for u in uses["wheels"])
    arches = {(entry["os"].split("-")[0], entry["arch"]) for entry in jobs["wheels"]["strategy"]["matrix"]["include"]}
    assert arches == {("ubuntu", "x86_64"), ("ubuntu", "aarch64"), ("macos", "arm64"), ("macos", "x86_64"),
                      ("windows", "AMD64")}
    assert any("build --sdist" in step.get("run", "") for step in jobs["sdist"]["steps"])
    publish = jobs["publish"]
    assert set(publish["needs"]) == {"wheels", "sdist"}
    assert publish["permissions"] == {"id-token": "write"}  # trusted publishing, no token
    assert any(u.startswith("pypa/gh-action-pypi-publish@") for u in uses["publish"])
    if shutil.which("actionlint"):
        subprocess.run(["actionlint", str(path)], check=True)


def test_wheel_check_is_an_executable_script():
    script = ROOT / ".ci" / "wheel_check"
    assert os.access(script, os.X_OK)
    done = subprocess.run([sys.executable, str(script), "--help"], text=True, stdout=subprocess.PIPE, check=True)
    assert "--smoke" in done.stdout
