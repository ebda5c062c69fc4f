# The README's two commands: `make run` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Installed before the project so pip never pulls a multi-GB CUDA build where a CPU wheel is
# at hand; set TORCH_SPEC to another version (or a CUDA build) on GPU machines if needed.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv run test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(VENV)/bin/droptune up

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Everything: lint, then the tests. First the few tests that must run alone (marked serial: one
# restarts the shared PostgreSQL; they live in tests/e2e, which alone is collected for them) beside
# the lint (mypy is one core's work, and neither touches the other), then unit, integration (SQLite and PostgreSQL) and end-to-end (real processes) on
# TEST_PROCS processes (pytest-xdist: the e2e tests partly wait on servers they start; each
# process starts on its own third of the suite in file order, so the heavy e2e tests are not all
# running at once, and idle processes steal work). Handing the e2e tests out first to every
# process (`--dist load`, slowest kind first) was tried: 12 min 14 s against 8 min 38 s, on 2
# cores; so was -n 4 (no faster: the suite is CPU-bound).
TEST_PROCS ?= 3
SERIAL_LOG := .pytest-serial.log
test: venv
	@echo "serial tests running beside the lint (their output follows it)"
	@$(VENV)/bin/pytest -m serial tests/e2e > $(SERIAL_LOG) 2>&1 & serial=$$!; \
	  $(MAKE) --no-print-directory lint; lint=$$?; \
	  wait $$serial; serial_rc=$$?; cat $(SERIAL_LOG); rm -f $(SERIAL_LOG); \
	  if [ $$lint -ne 0 ]; then echo "make test: the lint failed (above)"; exit 1; fi; \
	  if [ $$serial_rc -ne 0 ]; then echo "make test: the serial tests failed (above)"; exit 1; fi
	$(VENV)/bin/pytest -n $(TEST_PROCS) --dist worksteal -m "not serial"

# While iterating: the unit tests alone (no process, no database server).
test-fast: venv
	$(VENV)/bin/pytest tests/unit

bench: venv
	$(PY) bench/bench_engine.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
