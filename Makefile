# Set-up is automatic: the first target that needs Python creates .venv.
# torch==2.13.0 is installed first so `pip install -e .[dev]` pulls no second build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# TensorBoard's Time Series page with val/loss pinned above the other scalars
TB_URL := http://localhost:6006/?pinnedCards=%5B%7B%22plugin%22%3A%22scalars%22%2C%22tag%22%3A%22val%2Floss%22%7D%5D\#timeseries

.PHONY: install train test test-slow test-all sweep tensorboard bench bench-gpu lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)  ## model=small on Shakespeare, 2000 steps on the CPU (ARGS="..." adds overrides)
	$(PY) lm/train.py $(ARGS)

test: $(STAMP)  ## the fast tests, on every core (end-to-end runs: make test-slow; both: make test-all)
	$(PY) -m pytest -q -n auto

test-slow: $(STAMP)  ## the slow end-to-end runs: kills, signals, DDP, launchers, the make train number
	$(PY) -m pytest -q -m slow

test-all: test test-slow  ## every test, as CI runs them

sweep: $(STAMP)  ## a learning-rate sweep on the tiny model
	$(PY) lm/train.py -m model=tiny trainer.max_steps=500 optimizer.lr=1e-4,3e-4,1e-3 $(ARGS)

tensorboard: $(STAMP)  ## TensorBoard on outputs/ (ARGS="--logdir outputs/multirun/<date>/<time>" for one sweep)
	@echo "open $(TB_URL)  (val/loss pinned first)"
	$(VENV)/bin/tensorboard --logdir outputs $(ARGS)

bench: $(STAMP)  ## harness vs plain loop tokens/s; BPE encode MB/s; generate tokens/s; speedrun time to target (ARGS="steps=100" for lm bench train)
	$(VENV)/bin/lm bench train $(ARGS)
	$(VENV)/bin/lm bench tokenizer
	$(VENV)/bin/lm bench generate
	$(VENV)/bin/lm bench speedrun

bench-gpu: $(STAMP)  ## on a CUDA GPU: tokens/s and MFU of model=medium and model=gpt2, bf16 + compile
	$(VENV)/bin/lm bench gpu $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check lm tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
