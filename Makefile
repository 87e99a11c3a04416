# Two commands do all the set-up on a fresh machine: `make repro` (the whole pipeline) and `make test` (the tests).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(CURDIR)/$(VENV)/bin
# stage commands call `python`: put the project's interpreter first
RUN := PATH="$(BIN):$$PATH"

.PHONY: repro test install bench clean-venv

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

test: install
	$(RUN) $(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
