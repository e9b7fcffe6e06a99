"""The ``unshared`` command line: --version, help with defaults, errors with the right usage, params."""
import argparse
import subprocess
import sys

import pytest
import torch

import unshared
from unshared import cli


def _subparsers():
    action = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _exit_code(argv, capsys):
    with pytest.raises(SystemExit, match="^[02]$") as exit_info:  # argparse: 0 after help, 2 on an error
        cli.main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_version(capsys):
    code, out, _ = _exit_code(["--version"], capsys)
    assert code == 0 and out == f"unshared {unshared.__version__}\n"


def test_commands_are_demo_params_and_info():
    assert set(_subparsers()) == {"demo", "params", "info"}


@pytest.mark.parametrize("command", ["demo", "params", "info"])
def test_every_option_says_its_default(command, capsys):
    code, out, _ = _exit_code([command, "--help"], capsys)
    assert code == 0
    for action in _subparsers()[command]._actions:
        if action.option_strings and action.default is not argparse.SUPPRESS:
            text = cli._Formatter(command)._get_help_string(action)
            assert "default" in text, (action.option_strings, text)
            assert "default" in out.split(action.option_strings[-1], 1)[1], action.option_strings
    assert "(default: (" not in out and "None" not in out


def test_params_help_says_biases_are_left_out(capsys):
    _, out, _ = _exit_code(["params", "--help"], capsys)
    assert "Biases are left out unless --bias" in " ".join(out.split())


def test_cli_params_prints_seed_figures(capsys):
    assert cli.main(["params"]) == 0
    out = capsys.readouterr().out
    for figure in ("1,000,000,000,000", "100,000,000", "98,406,400", "6,400", "144", "source figure 36"):
        assert figure in out
    assert "MISMATCH" not in out


def test_cli_params_for_a_layer_with_and_without_biases(capsys):
    argv = ["params", "--input-size", "63x63", "--in-channels", "16", "--out-channels", "16", "--kernel-size", "9"]
    cli.main([*argv, "--tile-size", "5", "--rank", "4"])
    out = capsys.readouterr().out
    assert "biases left out" in out.splitlines()[0]
    assert "62,726,400" in out and "tiled" in out and "low-rank" in out and "20,736" in out
    cli.main([*argv, "--bias"])
    out = capsys.readouterr().out
    layer = unshared.LocallyConnected2d(16, 16, 9, input_size=63, device="meta")
    assert f"{sum(p.numel() for p in layer.parameters()):,}" == "62,774,800" and "62,774,800" in out
    assert f"{sum(p.numel() for p in torch.nn.Conv2d(16, 16, 9).parameters()):,}" in out
    assert "biases left out" not in out


@pytest.mark.parametrize("argv,ignored", [
    (["params", "--kernel-size", "3"], "--kernel-size"),
    (["params", "--bias", "--rank", "2"], "--bias, --rank"),
])
def test_params_refuses_options_it_would_ignore(argv, ignored, capsys):
    code, _, err = _exit_code(argv, capsys)
    assert code == 2 and err.startswith("usage: unshared params")
    assert f"error: {ignored} would be ignored without --input-size" in err


@pytest.mark.parametrize("argv,message", [
    (["params", "--input-size", "5", "--kernel-size", "9"], "kernel larger than the padded input"),
    (["params", "--input-size", "abc"], "expected integers like 63"),
    (["params", "--input-size", "8", "--in-channels", "3", "--groups", "2"], "in_channels must be divisible by groups"),
    (["params", "--input-size", "8", "--rank", "0"], "expected a positive integer, got '0'"),
])
def test_params_errors_show_the_params_usage(argv, message, capsys):
    code, _, err = _exit_code(argv, capsys)
    assert code == 2 and err.startswith("usage: unshared params") and message in err


@pytest.mark.parametrize("argv,message", [(["frobnicate"], "invalid choice"), ([], "required"),
                                          (["bench"], "invalid choice")])
def test_top_level_errors(argv, message, capsys):
    code, _, err = _exit_code(argv, capsys)
    assert code == 2 and err.startswith("usage: unshared [-h] [--version]") and message in err


def test_python_dash_m_runs():
    result = subprocess.run([sys.executable, "-m", "unshared", "params"], capture_output=True, text=True)
    assert result.returncode == 0 and "1,000,000,000,000" in result.stdout
