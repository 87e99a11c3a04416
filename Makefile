# Two commands do all the set-up on a fresh machine: `make repro` (the whole pipeline) and `make test` (the tests).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(CURDIR)/$(VENV)/bin
# stage commands call `python`: put the project's interpreter first
RUN := PATH="$(BIN):$$PATH"

.PHONY: repro test install bench clean-venv plots-template exps chat serve

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build. Override with TORCH_SPEC=...
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

repro: install
	$(RUN) $(BIN)/dvc repro

# the suite on TEST_WORKERS processes (pytest-xdist); tests that share a costly fixture (the one tiny `dvc repro` run
# the DVC tests copy, ...) go to one worker as a group (tests/groups.py), the others share the rest
TEST_WORKERS ?= 2
test: install
	$(RUN) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# rewrite .dvc/offline_plots.html (dvc plots pages with Vega inlined: they render offline)
plots-template: install
	$(BIN)/python tools/offline_plots_template.py

# experiments side by side on the figures people compare (params and metrics that differ between them); the run-info
# files' columns (throughput, seconds, date, device) differ in every run and are dropped
exps: install
	$(RUN) $(BIN)/dvc exp show --only-changed --drop 'Created|State|Executor|dvclive.*|models/.*|data/.*|.*tokens_per_sec|.*mfu|.*val_ppl|.*best_step|metrics/runtime/.*|.*_seconds|date|device|processes|threads|torch' $(EXPS_ARGS)

# talk to the trained model (after `make repro`): ARGS="--model models/pretrain", ARGS="--port 8080", ...
chat: install
	$(RUN) $(BIN)/llm-chat $(ARGS)

serve: install
	$(RUN) $(BIN)/llm-serve $(ARGS)

clean-venv:
	rm -rf $(VENV)
