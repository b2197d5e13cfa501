# Every target builds .venv itself, so a fresh clone needs nothing but Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of torch; an unpinned torch would pull several GB of CUDA packages.
TORCH_PIN := torch==2.13.0

.PHONY: install test demo bench lint clean

install: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python examples/demo.py

bench: $(STAMP)
	@set -e; for script in benchmarks/bench_*.py; do \
		echo "== $$script"; HF_HUB_OFFLINE=1 $(BIN)/python $$script; done

lint: $(STAMP)
	$(BIN)/python -m ruff check src tests benchmarks examples

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
