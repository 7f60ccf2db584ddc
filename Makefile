# optbench: `make help` lists the targets. Every target creates what it needs first, so
# `make sweep` and `make test` each work as the first command on a fresh clone.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_STAMP := data/MNIST/raw/train-images-idx3-ubyte
SEEDS ?= 5
EXPERIMENT ?= wizard_ffnn
# examples_cnn (the committed 10 seeds) takes about 2 1/4 hours on a 2-core CPU.
CNN_SEEDS ?= 10
# make suite: both tracks (defaults, tuned), SUITE_SEEDS seeds; docs/suite.md gives its runtime.
SUITE_SEEDS ?= 5
# make gpu-check's options, e.g. GPU_CHECK_ARGS="--device cpu" (its stages, small, on the CPU)
GPU_CHECK_ARGS ?=
# Extra overrides for the training targets, e.g. make sweep ARGS="threads=1 device=cpu"
ARGS ?=
# The training targets retrain into results/, moving what is there (the committed results)
# aside into results/<name>/replaced-<time>/ to diff against. RESUME=true instead resumes
# an interrupted target: complete runs are skipped, unfinished ones continue.
RESUME ?= false
TRAIN_ARGS = resume=$(RESUME) $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help install data sweep suite targets rerun-check gpu-bundle gpu-check reproduce regimes test test-fast lint format bench library constraints clean

help: ## list the targets
	@grep -E '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv in the checkout and install optbench (editable) with its test tools

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

data: $(DATA_STAMP) ## prepare MNIST under data/ (torchvision download, else the offline source)

$(DATA_STAMP): | $(STAMP)
	$(BIN)/optbench data prepare mnist

sweep: install data ## every optimizer of EXPERIMENT (default wizard_ffnn), SEEDS seeds (default 5) -> results/EXPERIMENT/, then the rerun check
	$(BIN)/optbench sweep experiment=$(EXPERIMENT) seeds=$(SEEDS) $(TRAIN_ARGS) hydra.run.dir=results/$(EXPERIMENT)
	@if [ "$(RESUME)" = false ]; then $(MAKE) --no-print-directory rerun-check; fi

rerun-check: install ## does results/EXPERIMENT reproduce the results it replaced (its newest replaced-*/)?
	@replaced=$$(ls -d results/$(EXPERIMENT)/replaced-* 2>/dev/null | sort | tail -n 1); \
	if [ -z "$$replaced" ]; then echo "rerun check: results/$(EXPERIMENT) replaced nothing"; \
	else $(BIN)/optbench compare "$$replaced" results/$(EXPERIMENT); fi

reproduce: install data ## the three tutorials' protocols with many seeds -> results/<preset>/, then the regimes
	$(BIN)/optbench sweep experiment=wizard_ffnn seeds=$(SEEDS) $(TRAIN_ARGS) hydra.run.dir=results/wizard_ffnn
	$(BIN)/optbench sweep experiment=simple_nn seeds=$(SEEDS) $(TRAIN_ARGS) hydra.run.dir=results/simple_nn
	$(BIN)/optbench sweep experiment=examples_cnn seeds=$(CNN_SEEDS) $(TRAIN_ARGS) hydra.run.dir=results/examples_cnn
	$(MAKE) regimes EXPERIMENT=wizard_ffnn ARGS="$(ARGS)" RESUME=$(RESUME)

suite: install data ## both tracks (defaults, tuned) of every workload x optimizer x seed (SUITE_SEEDS, default 5) -> results/suite/: tracks.html
	$(BIN)/optbench suite track=both seeds=$(SUITE_SEEDS) $(TRAIN_ARGS) hydra.sweep.dir=results/suite

targets: install data ## derive each workload's target from the reference optimizers (tuned, then 5 seeds) -> results/targets/, written into its preset
	$(BIN)/optbench targets $(TRAIN_ARGS) hydra.sweep.dir=results/targets

regimes: install data ## full-batch GD, pure SGD and mini-batch SGD on EXPERIMENT (3 seeds) -> results/regimes_EXPERIMENT/
	$(BIN)/optbench run -m experiment=$(EXPERIMENT) optimizer=sgd seeds=3 $(TRAIN_ARGS) \
		regime=full_batch,pure_sgd,mini_batch hydra.sweep.dir=results/regimes_$(EXPERIMENT)
	$(BIN)/optbench plot results/regimes_$(EXPERIMENT) --x epoch --x wall_s

test: install data ## lint, then every test (the command CI runs)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/pytest

test-fast: install data ## the tests not marked slow: the inner loop while developing
	$(BIN)/pytest -q -m "not slow"

lint: install ## ruff lint and format check
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: install ## format the code with ruff
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

bench: install data ## the fractions of the machine's floor that the ffnn sweep and the LeNet step reach, and the start-up (scripts/bench.py)
	$(BIN)/python scripts/bench.py

gpu-bundle: install data ## gather into gpu-bundle/ what `make gpu-check` needs on a GPU machine without a network
	$(BIN)/python scripts/gpu_check.py gather

gpu-check: ## on a machine with CUDA: device tests, stacked vs alone, resume, syncs, timings (GPU_CHECK_ARGS="--device cpu" to simulate)
	$(PYTHON) scripts/gpu_check.py check $(GPU_CHECK_ARGS)

library: install ## regenerate configs/optimizer/ for pytorch_optimizer's registry after upgrading it
	$(BIN)/python scripts/optimizer_library.py

constraints: install ## pin the installed versions into constraints.txt
	$(BIN)/pip freeze --exclude-editable | grep -v '^optbench' > constraints.txt

clean: ## remove outputs/ and multirun/ (keeps .venv, data/ and results/)
	rm -rf outputs multirun
