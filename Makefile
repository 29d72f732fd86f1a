# Forecast Gateway: every command a user or CI needs. `make run` and `make test`
# both install what they need into .venv first (pinned in requirements.lock).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tools installed into the venv (buf, grpcurl, ruff, mypy) come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: contract-baseline help install system-tools run postgres test unit functional lint check-gen gen train calibrate bench lock clean

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml clients/python/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e clients/python -e . || \
	  $(PY) -m pip install --quiet --no-deps -e clients/python -e .
	$(PY) -m tools.embedded_triton --prepare
	touch $(STAMP)

install: $(STAMP)  ## Create .venv with the pinned dependencies and the project.

run: install  ## Start Triton (embedded CPU build) and the gateway on localhost:50051.
	$(PY) -m tools.stack

postgres: install system-tools  ## A throwaway PostgreSQL on 127.0.0.1:5433 for the shared store; prints the make run line.
	$(PY) -m tools.local_postgres --port 5433

system-tools:  ## promtool and the PostgreSQL server binaries for the tests (apt-get where missing).
	tools/install_system_tools.sh

test: install system-tools lint check-gen  ## Lint, check generated code, run the whole test suite.
	$(PY) -m pytest -q

unit: install system-tools  ## Only the unit tests (no Triton; the A/B store tests start PostgreSQL).
	$(PY) -m pytest -q tests/unit

functional: install system-tools  ## Only the functional tests (real Triton + gateway).
	$(PY) -m pytest -q tests/functional

lint: install  ## ruff, mypy, buf lint/format/breaking (vs the released contract and the previous commit), compose schema.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format -d --exit-code --exclude-path protos/google
	$(BIN)/buf breaking --against protos/baseline.binpb
	@if git rev-parse --verify --quiet HEAD~1 >/dev/null; then \
	  $(BIN)/buf breaking --against '.git#ref=HEAD~1'; \
	else echo "buf breaking: no previous commit to compare against"; fi
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

contract-baseline: install  ## After a release: record the contract that `buf breaking` protects (protos/baseline.binpb).
	$(BIN)/buf build -o protos/baseline.binpb

gen: install  ## Regenerate the Python code and typed stubs from protos/.
	PYTHON=$(PY) tools/gen_protos.sh

check-gen: install  ## Fail if the committed generated code is stale.
	@tmp=$$(mktemp -d) && PYTHON=$(PY) tools/gen_protos.sh $$tmp >/dev/null && \
	  diff -r -x __pycache__ $$tmp gen/python && rm -rf $$tmp && echo "generated code is fresh"

train: install  ## Retrain the LSTM versions and quantile_mlp (model.pt, model.onnx), then evaluate by frequency (~5 min).
	$(PY) -m training.train_lstm --version 1
	$(PY) -m training.train_lstm --version 2
	$(PY) -m training.train_quantile
	$(PY) -m training.evaluate_frequencies

calibrate: install  ## Held-out conformal scores of the shipped versions; CSV=f COLUMN=c MODEL=m [VERSION=v]: any model, through the running gateway.
	$(if $(CSV),$(PY) -m training.calibrate_csv --csv $(CSV) --column $(COLUMN) --model $(MODEL) $(if $(VERSION),--version $(VERSION)) $(if $(FREQUENCY),--frequency $(FREQUENCY)),$(PY) -m training.calibrate)

bench: install  ## Throughput: gateway vs direct Triton vs the hand-written server (~3 min; BENCH_ARGS=--smoke; WORKERS=1,2,4: worker scaling instead).
	$(PY) -m bench $(if $(WORKERS),--workers $(WORKERS)) $(BENCH_ARGS)

lock:  ## Re-resolve requirements.in into requirements.lock (pins with sha256 hashes) in a scratch venv.
	rm -rf /tmp/fg-lock && $(PYTHON) -m venv /tmp/fg-lock
	/tmp/fg-lock/bin/pip install --quiet -r requirements.in
	/tmp/fg-lock/bin/pip freeze --all | grep -vE '^(pip|wheel)==' > /tmp/fg-lock/pins.txt
	/tmp/fg-lock/bin/python tools/lock.py /tmp/fg-lock/pins.txt > requirements.lock

clean:  ## Remove the venv and run-time files.
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
