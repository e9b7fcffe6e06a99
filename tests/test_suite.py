"""The test suite's own rules: the documented environment variables do what the README says,
every test leaves the global state as it found it, every property test scales with
``UNSHARED_FULL_SWEEP``, and every ``pytest.raises`` says what it expects."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import conftest

TESTS = Path(__file__).resolve().parent
SOURCES = sorted(TESTS.glob("*.py"))


def run_python(code: str, **env) -> str:
    """``code`` in a fresh interpreter with ``env`` added (``None`` removes a variable); its stdout."""
    environment = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    environment["PYTHONPATH"] = os.pathsep.join([str(TESTS), environment.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


MEASURED = """
import torch
from unshared.backends import selection

class Candidate:  # a backend that can run anything and takes a fixed time
    def __init__(self, seconds):
        self.seconds = seconds
    def can_run(self, x, w, g):
        return None
    def forward(self, x, w, g):
        return self.seconds

from unshared import _utils as U
g = U.Geometry((5,), (3,), (3,), (1,), ((0, 0),), (1,), 1, 2, 4)
backends = {"triton": Candidate(2.0), "torch": Candidate(1.0)}
chosen = selection.resolve(torch.randn(2, 2, 5), torch.randn(3, 4, 2, 3), g, "forward", backends,
                           lambda call, device: call())
print(selection.measuring(), chosen)
"""


@pytest.mark.parametrize("value,measured", [(None, True), ("1", True), ("0", False)])
def test_measure_backends_variable(value, measured):
    # measured: the faster candidate (torch here); off: the first that can run (triton)
    assert run_python(MEASURED, UNSHARED_MEASURE_BACKENDS=value) == f"{measured} {'torch' if measured else 'triton'}"


@pytest.mark.parametrize("value,on", [(None, False), ("", False), ("0", False), (" 0 ", False), ("1", True),
                                      ("yes", True)])
def test_switches_are_off_when_unset_empty_or_zero(value, on, monkeypatch):
    if value is None:
        monkeypatch.delenv("UNSHARED_FULL_SWEEP", raising=False)
    else:
        monkeypatch.setenv("UNSHARED_FULL_SWEEP", value)
    assert conftest.switched_on("UNSHARED_FULL_SWEEP") is on


@pytest.mark.parametrize("value,scale", [("0", 1), ("1", 5)])
def test_full_sweep_scales_the_examples(value, scale):
    assert run_python("import conftest; print(conftest.EXAMPLES_SCALE)", UNSHARED_FULL_SWEEP=value) == str(scale)


def test_global_state_is_restored_whatever_a_test_changed():
    saved = conftest._global_state()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(not saved["deterministic"])
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cuda.matmul.fp32_precision = "none"  # mixed with the legacy flag: reading it raises
    torch.backends.cudnn.allow_tf32 = not torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("medium")
    conftest._selection.measuring(not saved["measuring"])
    os.environ["UNSHARED_TEST_SUITE_PROBE"] = "1"
    os.environ.pop("TRITON_INTERPRET", None)
    changed = conftest._global_state()
    assert [k for k in saved if changed[k] == saved[k]] == ([] if saved["threads"] != 1 else ["threads"])
    conftest._restore(saved)
    assert conftest._global_state() == saved


def _calls(tree: ast.AST, attribute: str, module: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == module:
            yield node


def test_every_property_test_scales_with_the_full_sweep():
    unscaled = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            decorators = [d for d in node.decorator_list if isinstance(d, ast.Call)]
            if not any(getattr(d.func, "id", None) == "given" for d in decorators):
                continue
            examples = [k.value for d in decorators if getattr(d.func, "id", None) == "settings"
                        for k in d.keywords if k.arg == "max_examples"]
            if not examples or "EXAMPLES_SCALE" not in ast.unparse(examples[0]):
                unscaled.append(f"{path.name}::{node.name}")
    assert not unscaled, f"write @settings(max_examples=N * EXAMPLES_SCALE) on {unscaled}"


def test_every_pytest_raises_names_what_it_expects():
    loose = [f"{path.name}:{node.lineno}" for path in SOURCES for node in _calls(ast.parse(path.read_text()),
                                                                                   "raises", "pytest")
             if not any(k.arg == "match" for k in node.keywords)]
    assert not loose, f"pytest.raises without match= at {loose}"


def test_the_coverage_table_names_tests_that_exist():
    names = {path.name: {node.name for node in ast.walk(ast.parse(path.read_text()))
                         if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")} for path in SOURCES}
    current, missing, cited = None, [], 0
    for file, test in re.findall(r"`(test_\w+\.py)?::(test_\w+)`", (TESTS / "COVERAGE.md").read_text()):
        current = file or current
        cited += 1
        if test not in names.get(current, ()):
            missing.append(f"{current}::{test}")
    assert cited > 50 and not missing, f"tests/COVERAGE.md names tests that do not exist: {missing}"


def test_every_module_is_under_400_lines():
    # the layering rule of DESIGN.md: one module, one job, under 400 lines (the C sources too)
    root = Path(__file__).resolve().parents[1]
    files = [*(root / "src" / "unshared").rglob("*.py"), *(root / "csrc").glob("*.[ch]")]
    long = {str(p.relative_to(root)): n for p in files if (n := len(p.read_text().splitlines())) >= 400}
    assert not long, f"modules of 400 lines or more: {long}"
