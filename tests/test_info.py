"""`unshared info`: versions, backends and why not, the compiled kernels and their instruction
set, threads, GPU (issue 41)."""
import json
import subprocess
import sys

import pytest
import torch

import unshared
from unshared import cli, info
from unshared.backends import BACKENDS, cpu

KERNELS = bool(cpu.available_isas())


@pytest.fixture(scope="module")
def collected():
    return info.collect()


def test_collect_names_the_versions_and_every_backend(collected):
    assert collected["versions"]["unshared"] == unshared.__version__
    assert collected["versions"]["torch"] == torch.__version__
    assert set(collected["backends"]["cpu"]) == set(BACKENDS)
    assert collected["backends"]["cpu"]["torch"] is None  # the PyTorch backend runs everywhere
    assert "cuda" in collected["backends"] or not torch.cuda.is_available()
    assert collected["threads"] == torch.get_num_threads()
    json.dumps(collected)  # --json prints it


def test_a_backend_that_cannot_run_says_why(collected):
    # the conv backend computes shared banks only: a plain locally connected layer is refused
    assert "share" in collected["backends"]["cpu"]["conv"]


@pytest.mark.skipif(not KERNELS, reason="the compiled kernels are not built here")
def test_the_kernels_their_instruction_set_and_why(collected):
    kernels = collected["cpu_kernels"]
    assert kernels["loaded"] and kernels["library"] == str(cpu.library_path())
    assert kernels["isa"] == cpu.current_isa() and kernels["isas"] == list(cpu.available_isas())
    assert collected["backends"]["cpu"]["cpu"] is None
    text = info.format_info(collected)
    assert "compiled CPU kernels: loaded" in text
    assert "instruction set: " + {"portable": "portable C", "avx2": "AVX2+FMA", "avx512": "AVX-512"}[cpu.current_isa()] in text


@pytest.mark.skipif(not KERNELS or len(cpu.available_isas()) < 2, reason="needs two instruction sets")
def test_the_instruction_set_forced_by_the_environment(monkeypatch):
    monkeypatch.setenv("UNSHARED_CPU_ISA", "portable")
    kernels = info.collect()["cpu_kernels"]
    assert kernels["isa"] == "portable" and "UNSHARED_CPU_ISA=portable" in kernels["isa_reason"]


def test_kernels_that_were_not_built_show_the_compilers_error(collected):
    failed = {**collected, "cpu_kernels": {
        "loaded": False, "library": None, "isas": [], "reason": "the compiled CPU kernels are not built",
        "build": {"built": False, "error": "command 'gcc' failed", "platform": "linux x86_64",
                  "output": "$ gcc -c csrc/dispatch.c\ncsrc/dispatch.c:1:10: fatal error: stdlib.h: No such file"}}}
    text = info.format_info(failed)
    assert "compiled CPU kernels: NOT available" in text
    assert "NOT built (linux x86_64): command 'gcc' failed" in text
    assert "fatal error: stdlib.h: No such file" in text
    assert "PyTorch backend" in text


def test_the_build_record(tmp_path):
    assert info.build_record(tmp_path) is None
    (tmp_path / info.BUILD_RECORD).write_text('{"built": true, "compiler": "unix", "platform": "linux x86_64"}')
    assert info.build_record(tmp_path)["built"] is True
    (tmp_path / info.BUILD_RECORD).write_text("not json")
    assert info.build_record(tmp_path) is None


def test_the_gpu_line(collected):
    text = info.format_info({**collected, "gpus": [{"name": "NVIDIA H100", "capability": "9.0"}], "cuda": "12.8"})
    assert "GPU 0: NVIDIA H100, compute capability 9.0 (CUDA 12.8)" in text
    assert "GPU: none" in info.format_info({**collected, "gpus": [], "cuda": None})


def test_the_command(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"unshared {unshared.__version__}") and "backends on cpu" in out
    assert cli.main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["versions"]["unshared"] == unshared.__version__


def test_python_dash_m_unshared_info():
    done = subprocess.run([sys.executable, "-m", "unshared", "info"], text=True, stdout=subprocess.PIPE, check=True)
    assert "compiled CPU kernels:" in done.stdout and "threads:" in done.stdout
