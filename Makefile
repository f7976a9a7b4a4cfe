# The commands README and CI quote. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
GENAI := $(BIN)/genai
# Use the project's shared data folder when it sits beside the checkout (CI and dev machines here).
SHARED_DATA := $(wildcard $(CURDIR)/../shared/data)
export GENAI_DATA_DIR ?= $(SHARED_DATA)

.PHONY: setup data demo test bench bench-quality lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,export]'
	touch $@

# Make sure Fashion-MNIST is readable: $GENAI_DATA_DIR, the cache, Debian's package, or a download.
data: setup
	@$(GENAI) data fashion-mnist >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's dataset-fashion-mnist" >&2; \
	    apt-get install -y -q dataset-fashion-mnist >&2 || { apt-get update -q >&2 && apt-get install -y -q dataset-fashion-mnist >&2; }; \
	  fi; }
	@$(GENAI) data fashion-mnist

# A one-minute budget: a DCGAN on Fashion-MNIST (the short-budget recipe), then an 8x8 grid in demo.png.
demo: data
	$(GENAI) train --model dcgan --data fashion-mnist --max-time 60s --sample-every 200
	$(GENAI) sample --n 64 --out demo.png --force
	@echo "wrote demo.png (samples) and runs/latest/ (checkpoint, grids, metrics.jsonl, loss.svg, report.html)"

test: setup
	$(BIN)/python -m pytest

# Minutes of CPU: training and export throughput, genai vs the pytorch/examples loop, SIGKILL safety,
# whether a one-minute --max-time holds for the families with work after training (vae, cvae).
bench: setup
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_export.py
	$(BIN)/python benchmarks/bench_throughput.py
	$(BIN)/python benchmarks/bench_crash.py --kills 25 --json
	$(BIN)/python benchmarks/bench_budget.py

# Hours of CPU (minutes on a GPU): sample quality per family, DCGAN time to a fixed FID,
# pix2pix against its U-Net on L1 alone (edges and masked Fashion-MNIST, equal CPU time), the
# MLP GAN's budget with its best-judged model against its last, and the VAE against
# pytorch/examples' at equal wall time.
bench-quality: setup
	PATH=$(CURDIR)/$(BIN):$$PATH benchmarks/bench_quality.sh
	$(BIN)/python benchmarks/bench_time_to_quality.py
	$(BIN)/python benchmarks/bench_keep_best.py --model gan --max-time 30m
	$(BIN)/python benchmarks/bench_vae_likelihood.py --max-time 300s
	$(BIN)/python benchmarks/bench_pix2pix.py --task edges --task masked
	@if [ -n "$$PYTORCH_EXAMPLES_VAE" ]; then $(BIN)/python benchmarks/bench_vae_examples.py --budget 60 --budget 300 --budget 600; \
	else echo "skipped bench_vae_examples.py: set PYTORCH_EXAMPLES_VAE to pytorch/examples' vae/main.py (not vendored)" >&2; fi

lint: setup
	$(BIN)/ruff check genai_cli tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
