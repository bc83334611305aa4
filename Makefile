# Two commands for a newcomer: `make demo` (a real federated training) and `make test` (the test suite).
# Both create .venv on first use. TORCH picks the torch wheel: the default CPU build installs from a local
# wheel in seconds here; with a GPU, use e.g. `make demo TORCH=torch` for the CUDA build.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test env proto

$(BIN)/fedstream: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,sim,llm]"
	touch $(BIN)/fedstream

env: $(BIN)/fedstream

demo: env
	$(BIN)/fedstream demo --clients 4 --rounds 10

test: env
	$(BIN)/python -m pytest -q

proto: env
	$(BIN)/python -m fedstream.common.protogen
