# Two commands from a fresh clone: `make demo` and `make test`. Both set up a virtual environment
# in .venv first (PyTorch's pinned build, then this project, editable, with an extra); the stamp
# files make the second run skip what is already installed, until the build files change (then
# the reinstall also recompiles the CPU kernels from csrc/).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo demo-quick test test-time docs docs-serve figures install-sizes clean

demo: $(VENV)/demo.stamp
	$(BIN)/unshared demo

demo-quick: $(VENV)/demo.stamp
	$(BIN)/unshared demo --quick

# The README's test command, in the virtual environment.
test: $(VENV)/test.stamp
	$(BIN)/python -m pytest -q

# The documentation site, built into site/ in strict mode (a warning is an error: a broken link, an
# unresolved cross-reference, a docstring that does not render, a tutorial that raises). The
# tutorials and the benchmark pages execute while it builds; nothing is fetched from the network.
docs: $(VENV)/docs.stamp
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --clean --strict

# The site, served with live reload at http://127.0.0.1:8000 (DOCS_ADDR=host:port to change).
DOCS_ADDR ?= 127.0.0.1:8000
docs-serve: $(VENV)/docs.stamp
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr $(DOCS_ADDR)

# The test suite's record: one timed run of `make test`'s command, recorded in docs/test-suite.txt
# (the site's install page shows it).
test-time: $(VENV)/test.stamp
	$(BIN)/python benchmarks/suite_time.py --output docs/test-suite.txt

# The install table (docs/benchmarks/installs.md): what `make demo` and `make test` download and install, measured in
# the environment `make test` made (benchmarks/results/install-sizes.md; wheels kept in build/wheels).
install-sizes: $(VENV)/test.stamp
	$(BIN)/python benchmarks/install_sizes.py

# The demo's table and figures (docs/guide/demo.md): one recorded run of the full demo (docs/results.json
# and the figures, and what it printed in docs/demo.txt; tests/test_records.py checks the pages against them).
figures: $(VENV)/demo.stamp
	{ echo "load average at start (1, 5, 15 min): $$(cut -d' ' -f1-3 /proc/loadavg)"; \
	  $(BIN)/unshared demo --output docs --no-progress; } > docs/demo.txt; status=$$?; cat docs/demo.txt; exit $$status

# PyTorch goes in first, pinned: on a CPU-only machine its index resolves to the CPU build,
# and the project's `torch>=2.4` is then already satisfied, so no CUDA wheels are pulled.
$(VENV)/torch.stamp:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	touch $@

BUILD := pyproject.toml setup.py $(wildcard csrc/*)

$(VENV)/demo.stamp: $(BUILD) $(VENV)/torch.stamp
	$(BIN)/python -m pip install -q -e ".[demo]"
	touch $@

# The test extra includes the demo extra, so it satisfies the demo too.
$(VENV)/test.stamp: $(BUILD) $(VENV)/torch.stamp
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@ $(VENV)/demo.stamp

# The docs extra includes the demo extra (matplotlib, the demo's data).
$(VENV)/docs.stamp: $(BUILD) $(VENV)/torch.stamp
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $@ $(VENV)/demo.stamp

clean:
	rm -rf $(VENV) unshared-demo src/*.egg-info site
