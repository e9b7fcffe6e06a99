"""The documentation site is true and complete, checked without building it (``make docs`` builds
it in strict mode; these tests keep ``make test`` honest about the same pages):

- Every fenced block of ``docs/**/*.md`` names its language (``python``, ``bash`` or ``text``).
- Every ``python`` block runs: those with ``exec="on"`` while the site is built (the tutorials and
  the generated benchmark pages, too slow for the tests), every other one here, page by page in
  order, each page in a fresh namespace, except those marked by an HTML comment ``skip: <why>``
  on the line before the fence. A ``print(...)`` line with a comment prints exactly that comment,
  as in the README (``tests/test_readme.py``).
- A ``text`` block that starts with ``$ unshared ...`` shows exactly what that command prints.
- Every public name (``unshared.__all__`` and the public modules' ``__all__``) has an entry in the
  API reference, and every page is in the navigation.
- The architecture page's code map names every module of the package, under its folder (a
  subpackage's ``__init__.py`` by the folder's line).
"""
import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

import unshared
from unshared import cli
from test_readme import MARK, SKIP, _claims, blocks

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_helpers" not in p.parts)
EXEC = re.compile(r'\bexec="(?:on|1|true|yes)"')
PUBLIC_MODULES = ("functional", "backends", "distributed", "interop", "models", "privacy", "costs", "analysis",
                  "topography", "sparse")
PAGE_MARK = "\x1eDOCS-PAGE"


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def fences(page: Path):
    """``(block, options)`` for every fence of the page: the options are what follows the language."""
    text = page.read_text()
    options = dict((m.start(), m.group(1)) for m in re.finditer(r"^```\S*([^\n]*)$", text, re.M))
    found = []
    for block in blocks(text):
        start = sum(len(line) + 1 for line in text.splitlines()[:block.line - 1])
        found.append((block, options.get(start, "")))
    return found


def runnable(page: Path):
    return [b for b, opts in fences(page) if b.language == "python" and not EXEC.search(opts)
            and not SKIP.search(b.before)]


def test_every_block_names_its_language():
    for page in PAGES:
        for block, opts in fences(page):
            assert block.language in ("python", "bash", "text"), (
                f"{rel(page)} line {block.line}: fence it as python, bash or text, got {block.language!r}")
            if block.language != "python":
                assert not EXEC.search(opts), f"{rel(page)} line {block.line}: only python blocks execute"


def test_skip_markers_have_a_reason_and_mark_python_blocks():
    for page in PAGES:
        text = page.read_text()
        marked = [b for b, _ in fences(page) if "skip" in b.before and "<!--" in b.before]
        for block in marked:
            assert block.language == "python", f"{rel(page)} line {block.line}: a skip marker before a non-python block"
            assert SKIP.search(block.before), f"{rel(page)} line {block.line}: write <!-- skip: why -->"
        assert text.count("<!-- skip") == len(marked), f"{rel(page)}: a skip marker not on the line before a fence"


def test_tutorials_execute_when_the_site_is_built():
    tutorials = sorted((DOCS / "tutorials").glob("*.md"))
    assert len(tutorials) >= 4
    for page in tutorials:
        executed = [b for b, opts in fences(page) if b.language == "python" and EXEC.search(opts)]
        assert executed, f"{rel(page)}: a tutorial executes while the site is built"


def _driver(pages) -> tuple[str, list[tuple[str, object, str]]]:
    """One script that runs each page's blocks in a fresh namespace, marking pages and checked prints."""
    checks, sources = [], []
    for page in pages:
        lines = [f"# ---- {rel(page)}"]
        for block in runnable(page):
            claimed = dict(_claims(block.code))
            lines.append(f"# ---- {rel(page)} line {block.line}")
            for i, line in enumerate(block.code.splitlines()):
                if i in claimed:
                    lines += [f"print({MARK + str(len(checks))!r}, flush=True)", line, f"print({MARK!r}, flush=True)"]
                    checks.append((rel(page), block, claimed[i]))
                else:
                    lines.append(line)
        sources.append((rel(page), "\n".join(lines) + "\n"))
    script = (
        "import sys, traceback\n"
        f"PAGES = {sources!r}\n"
        "for name, code in PAGES:\n"
        f"    print({PAGE_MARK!r} + name, flush=True)\n"
        "    try:\n"
        "        exec(compile(code, name, 'exec'), {'__name__': '__main__'})\n"
        "    except BaseException:\n"
        "        print('FAILED', flush=True)\n"
        "        traceback.print_exc(file=sys.stdout)\n"
        "        sys.stdout.flush()\n"
    )
    return script, checks


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory):
    """Every page's runnable blocks, run once in one fresh interpreter: ``{page: (output, checks)}``."""
    pages = [p for p in PAGES if runnable(p)]
    script, checks = _driver(pages)
    path = tmp_path_factory.mktemp("docs") / "docs_blocks.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(unshared.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(path)], cwd=path.parent, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    outputs = dict(re.findall(re.escape(PAGE_MARK) + r"(\S+)\n(.*?)(?=" + re.escape(PAGE_MARK) + r"|\Z)",
                              run.stdout, re.S))
    return {name: (outputs.get(name, ""), [c for c in checks if c[0] == name]) for name in map(rel, pages)}


RUNNABLE_PAGES = [rel(p) for p in PAGES if runnable(p)]


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_python_blocks_run_and_print_what_they_say(page, page_runs):
    output, checks = page_runs[page]
    assert not output.startswith("FAILED") and "\nFAILED\n" not in output, f"{page}'s python blocks fail:\n{output[-4000:]}"
    printed = dict(re.findall(re.escape(MARK) + r"(\d+)\n(.*?)" + re.escape(MARK) + r"\n", output, re.S))
    # the checked prints are numbered over all pages, in the order the driver ran them
    every = [c for p in RUNNABLE_PAGES for c in page_runs[p][1]]
    for n, (name, block, claim) in enumerate(every):
        if name == page:
            assert str(n) in printed, f"{page} line {block.line}: the checked print did not run"
            assert printed[str(n)].rstrip("\n") == claim, f"{page} block at line {block.line}"


def _console_listings():
    return [(rel(page), block) for page in PAGES for block, _ in fences(page)
            if block.language == "text" and block.code.startswith("$ unshared ")]


@pytest.mark.parametrize("listing", _console_listings(), ids=lambda l: f"{l[0]}:{l[1].line}")
def test_console_listings_show_what_the_command_prints(listing):
    page, block = listing
    command, _, shown = block.code.partition("\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(shlex.split(command)[2:]) == 0
    assert out.getvalue() == shown, f"{page} line {block.line}: {command}"


# ----------------------------------------------------------------------------- the API reference

def api_entries() -> set[str]:
    """The objects named by ``::: path`` directives anywhere in the site."""
    return {m.group(1) for page in PAGES for m in re.finditer(r"^::: ([\w.]+)\s*$", page.read_text(), re.M)}


def documented(name: str, obj, owner: str, entries: set[str]) -> bool:
    """Whether ``owner.name`` (that is ``obj``) has an entry: its own directive, or its module's with the
    name in that module's ``__all__``."""
    if f"{owner}.{name}" in entries:
        return True
    if isinstance(obj, types.ModuleType):
        return obj.__name__ in entries
    module = getattr(obj, "__module__", None) or owner
    for candidate in {owner, *(module.rsplit(".", k)[0] for k in range(module.count(".") + 1))}:
        if candidate in entries and f"{candidate}.{name}" in entries | {f"{candidate}.{n}" for n in
                                                                       getattr(importlib.import_module(candidate),
                                                                               "__all__", ())}:
            return True
    return False


def test_every_public_name_has_an_api_entry():
    entries = api_entries()
    missing = [f"unshared.{name}" for name in unshared.__all__
               if not documented(name, getattr(unshared, name), "unshared", entries)]
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(f"unshared.{module_name}")
        if module.__name__ not in entries:
            missing.append(module.__name__)
            continue
        missing += [f"{module.__name__}.{name}" for name in getattr(module, "__all__", ())
                    if not documented(name, getattr(module, name), module.__name__, entries)]
    assert not missing, f"no entry in docs/api/ for {missing}: add a '::: name' line to the API page it belongs on"


def test_the_api_check_finds_a_missing_name():
    assert documented("layer_costs", unshared.layer_costs, "unshared", {"unshared.costs"})
    assert not documented("layer_costs", unshared.layer_costs, "unshared", {"unshared.analysis"})
    assert documented("functional", unshared.functional, "unshared", {"unshared.functional"})


def nav_pages() -> list[str]:
    return re.findall(r"^\s*-\s+(?:[^\n:]+:\s+)?([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)


def test_every_page_is_in_the_navigation():
    sys.path.insert(0, str(DOCS / "_helpers"))
    try:
        optional = importlib.import_module("hooks").OPTIONAL   # pages others are writing: may not exist yet
    finally:
        sys.path.remove(str(DOCS / "_helpers"))
    nav = nav_pages()
    assert len(nav) == len(set(nav)), "a page twice in the navigation"
    pages = {str(p.relative_to(DOCS)) for p in PAGES}
    assert not pages - set(nav), f"pages missing from mkdocs.yml's nav: {sorted(pages - set(nav))}"
    assert not set(nav) - pages - set(optional), f"nav entries without a page: {sorted(set(nav) - pages)}"


# ----------------------------------------------------------------------------- the code map

def code_map() -> list[str]:
    text = (DOCS / "architecture.md").read_text()
    return text.split("## Where the code lives", 1)[1].split("```text\n", 1)[1].split("```", 1)[0].splitlines()


def region(lines: list[str], folder: str) -> list[str]:
    """The lines of the map inside ``folder`` (``"backends/triton"``): below its line, indented deeper."""
    start, depth = 0, -1
    for part in ["src/unshared", *filter(None, folder.split("/"))]:
        name = part + "/"
        for i in range(start, len(lines)):
            line = lines[i]
            indent = len(line) - len(line.lstrip())
            if i > start and depth >= 0 and line.strip() and indent <= depth:
                raise AssertionError(f"the code map has no folder {folder!r} ({name} not under its parent)")
            if re.search(rf"(?:^|\s){re.escape(name)}(?:\s|$)", line.strip()) and indent > depth:
                start, depth = i, indent
                break
        else:
            raise AssertionError(f"the code map has no folder {folder!r}")
    inside = [lines[start].split(name, 1)[1]]
    for line in lines[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= depth:
            break
        inside.append(line)
    return inside


def test_the_code_map_names_every_module():
    package = ROOT / "src" / "unshared"
    lines = code_map()
    missing = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if path.name == "__init__.py" and path.parent != package:
            continue  # a subpackage's __init__.py: the folder's own line speaks for it
        folder = str(relative.parent) if relative.parent != Path(".") else ""
        words = set(re.findall(r"[\w.]+\.py", "\n".join(region(lines, folder))))
        if path.name not in words:
            missing.append(str(relative))
    assert not missing, f"docs/architecture.md's code map does not name {missing} under their folders"


def test_the_code_map_check_sees_folders():
    lines = ["src/unshared/", "  a.py   x", "  sub/   b.py", "    c.py", "  d.py"]
    assert "c.py" in "".join(region(lines, "sub")) and "d.py" not in "".join(region(lines, "sub"))
    with pytest.raises(AssertionError, match="the code map has no folder .other."):
        region(lines, "other")
