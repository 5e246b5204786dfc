# Two entry points for a fresh machine: `make run` and `make test`.
# Each creates .venv if missing and installs the project into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: run test bench bench-quick chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-deps: $(PY) pyproject.toml
	$(PIP) -e '.[examples]'
	@touch $@

$(VENV)/.test-deps: $(PY) pyproject.toml
	$(PIP) -e '.[test]'
	@touch $@

run: $(VENV)/.run-deps
	$(PY) -m gpuflow run $(ARGS)

# Headless Chromium checks index.html; the tests skip without it.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "chromium not installed: its tests will skip"; }

test: $(VENV)/.test-deps chromium
	$(PY) -m ruff check gpuflow tests benchmarks
	$(PY) -m mypy --strict gpuflow
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.test-deps
	$(PY) -m benchmarks $(ARGS)

bench-quick: $(VENV)/.test-deps
	$(PY) -m benchmarks --quick $(ARGS)

clean:
	rm -rf $(VENV) gpuflow-out .pytest_cache
