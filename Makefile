# make smoke   the main job on the embedded default: the toy world, 3 methods x 5 strategies, then the report
# make test-all   the whole test suite on two workers (what CI runs, see .ci/run)
# make test    the fast lane: unit tests and one end-to-end run, under 3 minutes on 2 cores
# make real-shape  every method x strategy at SD v1.5's real shape (512 px, random weights), about an hour on 2 cores
# make gpu-check   on one GPU, a few minutes: fp16/bf16 timings, memory, L_det determinism, resume after SIGKILL
# Both create .venv and install the pinned stack on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: install smoke test test-all bench real-shape gpu-check
install: $(VENV)/.installed

# torch and torchvision first, pinned together; everything else under the same constraints.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

smoke: install
	$(PY) -m benchmark.sweep experiment=toy_smoke
	$(PY) -m analysis report experiment=toy_smoke

# The fast lane for the edit-test loop: what is marked slow (end-to-end runs of several seconds) or
# needs Slurm is left to test-all.
test: install
	$(PY) -m pytest -q -m "not slow and not slurm"

# Everything, on two workers (one torch thread each: tests/conftest.py); the Slurm tests share one
# worker (--dist loadgroup, group "slurm") so they do not compete for the local cluster's CPUs.
test-all: install
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: install
	$(PY) -m benchmark.measure.bench

real-shape: install
	$(PY) -m benchmark.sweep experiment=real_shape

gpu-check: install
	$(PY) -m benchmark.measure.gpu_check out=results/gpu_check
