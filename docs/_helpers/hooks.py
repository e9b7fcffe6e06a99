"""MkDocs hooks of the site.

- The helpers in ``docs/_helpers/`` (benchmark pages, figures) and the scripts of ``examples/``
  become importable by the pages' executed blocks (markdown-exec runs them in this process).
- ``unshared.__main__`` runs the command line when imported; the API reference inspects the
  package's modules by importing them, so a stand-in takes its place for the build.
- Pages written by others that may not exist yet (``OPTIONAL``) leave the navigation with a note
  in the log instead of failing the build, and links to them become plain text; likewise
  ``CHANGELOG.md``, which the changelog page includes (one changelog, kept at the root).
"""
import logging
import re
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OPTIONAL = {"guide/genomics.md"}
log = logging.getLogger("mkdocs.hooks.unshared")


def _drop(nav, missing):
    kept = []
    for item in nav:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, list):
                kept.append({title: _drop(value, missing)})
            elif value not in missing:
                kept.append(item)
        elif item not in missing:
            kept.append(item)
    return kept


def on_config(config):
    for path in (HERE, ROOT / "examples"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    sys.modules.setdefault("unshared.__main__", types.ModuleType("unshared.__main__"))
    missing = {page for page in OPTIONAL if not (Path(config["docs_dir"]) / page).exists()}
    for page in sorted(missing):
        log.info("%s does not exist yet: left out of the navigation", page)
    if missing:
        config["nav"] = _drop(config["nav"], missing)
    return config


def on_page_markdown(markdown, page, config, files):
    for missing in (p for p in OPTIONAL if not (Path(config["docs_dir"]) / p).exists()):
        name = re.escape(missing.rsplit("/", 1)[-1])
        markdown = re.sub(rf"\[([^\]]+)\]\((?:[./\w-]*/)?{name}(?:#[^)]*)?\)", r"\1", markdown)
    if page.file.src_uri == "changelog.md" and not (ROOT / "CHANGELOG.md").exists():
        log.info("CHANGELOG.md does not exist yet: the changelog page says so")
        return "# Changelog\n\n`CHANGELOG.md` is not in this checkout yet.\n"
    return markdown
