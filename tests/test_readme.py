"""The README is true: its code runs and prints what it says.

- Every fenced block names its language: ``python`` blocks are run, ``bash`` and ``text`` are not.
- Every ``python`` block runs, in order, in one fresh interpreter, except those marked by an HTML
  comment with ``skip: <why>`` on the line just before the fence (for code that needs CUDA or
  several processes); a marker stands before nothing but a ``python`` block.
- A top-level ``print(...)`` line with a comment prints exactly that comment: the comment on the
  same line, or else the comment lines just below it.
- A ``text`` block that starts with ``$ unshared ...`` shows exactly what that command prints.

The long sections that were here moved to the documentation site (``docs/``), and their checks
with them: ``tests/test_docs.py`` runs the site's blocks with the helpers of this file, and checks
the code map of ``docs/architecture.md``; ``tests/test_records.py`` checks the numbers of both.
"""
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

import unshared
from unshared import cli

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
SKIP = re.compile(r"<!--\s*skip:\s*(\S.*?)\s*-->")
MARK = "\x1eREADME-CHECK"


@dataclass
class Block:
    language: str
    code: str
    line: int            # the fence's line number in README.md
    before: str          # the line just before the fence


def blocks(text: str) -> list[Block]:
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text.splitlines()[line - 2] if line > 1 else ""
        found.append(Block(match.group(1), match.group(2), line, before))
    return found


def _claims(code: str) -> list[tuple[int, str]]:
    """``(line index, claimed output)`` for each top-level ``print(...)`` line followed by a comment."""
    lines = code.splitlines()
    claims = []
    for i, line in enumerate(lines):
        if not line.startswith("print("):
            continue
        tokens = list(tokenize.generate_tokens(io.StringIO(line + "\n").readline))
        trailing = [t.string[1:].strip() for t in tokens if t.type == tokenize.COMMENT]
        below = []
        for following in lines[i + 1:] if not trailing else []:
            if not following.startswith("# "):
                break
            below.append(following[2:].rstrip())
        claim = "\n".join(trailing + below)
        if claim:
            claims.append((i, claim))
    return claims


def _script(runnable: list[Block]) -> tuple[str, list[tuple[Block, str]]]:
    """The blocks as one script, each checked print between two markers; and the claims, in order."""
    parts, checks = [], []
    for block in runnable:
        lines = block.code.splitlines()
        claimed = dict(_claims(block.code))
        parts.append(f"# ---- README.md line {block.line}")
        for i, line in enumerate(lines):
            if i in claimed:
                parts += [f"print({MARK + str(len(checks))!r}, flush=True)", line, f"print({MARK!r}, flush=True)"]
                checks.append((block, claimed[i]))
            else:
                parts.append(line)
    return "\n".join(parts) + "\n", checks


def test_every_block_names_its_language():
    for block in blocks(README.read_text()):
        assert block.language in ("python", "bash", "text"), (
            f"README.md line {block.line}: fence it as python (runs), bash or text, got {block.language!r}")


def test_skip_markers_have_a_reason_and_mark_python_blocks():
    text = README.read_text()
    marked = [b for b in blocks(text) if "skip" in b.before and "<!--" in b.before]
    for block in marked:
        assert block.language == "python", f"README.md line {block.line}: a skip marker before a non-python block"
        assert SKIP.search(block.before), f"README.md line {block.line}: write <!-- skip: why -->"
    assert text.count("<!-- skip") == len(marked), "a skip marker that is not on the line before a fence"


def test_python_blocks_run_in_order_and_print_what_they_say(tmp_path):
    python = [b for b in blocks(README.read_text()) if b.language == "python"]
    runnable = [b for b in python if not SKIP.search(b.before)]
    assert runnable, "no python block to run"
    script, checks = _script(runnable)
    path = tmp_path / "readme_blocks.py"
    path.write_text(script)
    # the unshared that this test imported, wherever the subprocess runs
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(unshared.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, f"the README's python blocks fail:\n{run.stderr[-4000:]}"
    printed = dict(re.findall(re.escape(MARK) + r"(\d+)\n(.*?)" + re.escape(MARK) + r"\n", run.stdout, re.S))
    assert len(printed) == len(checks)
    for n, (block, claim) in enumerate(checks):
        assert printed[str(n)].rstrip("\n") == claim, f"README.md block at line {block.line}"


def _console_listings() -> list[Block]:
    return [b for b in blocks(README.read_text()) if b.language == "text" and b.code.startswith("$ unshared ")]


@pytest.mark.parametrize("block", _console_listings(), ids=lambda b: f"line{b.line}")
def test_console_listings_show_what_the_command_prints(block, capsys):
    command, _, shown = block.code.partition("\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(shlex.split(command)[2:]) == 0
    assert out.getvalue() == shown, f"README.md line {block.line}: {command}"


def test_claims_are_found():
    code = ('x = 1\nprint(x)  # 1\n# not a claim\nprint(x, x)\n# 1 1\n# 2\nprint("#")\nif x:\n'
            '    print(x)  # indented: not checked\n')
    assert _claims(code) == [(1, "1"), (3, "1 1\n2")]
