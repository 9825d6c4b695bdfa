# `make demo` and `make test` do all set-up on a fresh machine (a .venv in this directory).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# The suite runs on TEST_WORKERS processes (pytest-xdist), each module's tests in one of them (its module-scoped
# servers start once); TEST_WORKERS=0 runs it in this process, as plain pytest does.
TEST_WORKERS ?= 2
XDIST  := -n $(TEST_WORKERS) --dist loadscope

.PHONY: install demo replicate test test-slow test-processes test-stack lint bench ui stack stack-down clean

install: $(STAMP)

# constraints.txt pins every package to the versions tested here (torch 2.13.0 is a CPU wheel on this
# machine's disk; an unpinned torch would pull a ~5 GB CUDA build). scripts/install-venv.sh installs them with
# uv, byte-compiled on every core (pip, if uv fails; the script says why each part is there).
$(STAMP): pyproject.toml constraints.txt scripts/install-venv.sh
	scripts/install-venv.sh $(VENV)
	touch $(STAMP)

# The main job: the demo campaign (SFT + 2 RLHF iterations of the embedded SmolLM2) as Prefect flows,
# tracked in MLflow; it ends with a per-iteration table. Rerunning it is a cache hit. On a CPU without native
# bf16 (fp32) it runs experiment=demo_fp32, the same campaign at about a third of the work; DEMO=demo forces the full one.
DEMO ?=
demo: install
	@experiment="$(DEMO)"; \
	if [ -z "$$experiment" ]; then \
	  experiment=$$($(PY) -c 'from rlhf.flows.config import demo_experiment; print(demo_experiment())') || exit 1; \
	fi; \
	echo "$(VENV)/bin/rlhf run experiment=$$experiment"; \
	$(VENV)/bin/rlhf run experiment=$$experiment

# The paper's figures measured on the embedded model (conf/experiment/replicate.yaml: 4 RLHF iterations, about
# 75 minutes on 2 cores with bf16): the campaign, then its report (Markdown + PNGs) copied to $(RESULTS) to commit.
RESULTS ?= docs/results/replicate
replicate: install
	$(VENV)/bin/rlhf run experiment=replicate
	$(VENV)/bin/rlhf report experiment=replicate io.output=$(RESULTS)

ui: install
	$(VENV)/bin/rlhf ui

# docker/compose.yaml's services without Docker, on 127.0.0.1 with state in $(STACK_DIR); then
# `source $(STACK_DIR)/stack.env` (docker/README.md, "Native stack").
STACK_DIR ?= runs/stack
stack: install
	VENV=$(VENV) docker/local-stack.sh up $(STACK_DIR)

stack-down:
	VENV=$(VENV) docker/local-stack.sh down $(STACK_DIR)

# The suite but three kinds of tests, each a target of its own: the slow ones (`make test-slow`: the PPO
# learning tests, campaigns run two or three times over, the embedded SmolLM2), those that start processes of
# their own (`make test-processes`: multi-process training, which launches 2 processes dozens of times; Ray and
# Dask; `rlhf run` killed and resumed; `rlhf serve`; a live `mlflow server`; a second machine's rerun) and the
# team stack's (`make test-stack`). .ci/run runs all four: together they are the whole suite.
test: install
	$(PY) -m pytest -q $(XDIST) -m "not slow and not processes and not stack" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q $(XDIST) -m "slow and not processes and not stack" $(PYTEST_ARGS)

test-processes: install
	$(PY) -m pytest -q $(XDIST) -m processes $(PYTEST_ARGS)

# The team stack started natively (docker/local-stack.sh: Postgres, S3, Prefect server and worker, MLflow server)
# and a deployed campaign driven through it, worker kill included; needs PostgreSQL's server (apt-get install
# postgresql).
test-stack: install
	$(PY) -m pytest -q $(XDIST) -m stack $(PYTEST_ARGS)

# ruff (configured in pyproject.toml): unused and undefined names, likely bugs, import order, line length.
lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m pip install -q -c constraints.txt trl
	$(PY) -m benchmarks.sft_throughput
	$(PY) -m benchmarks.rm_throughput
	$(PY) -m benchmarks.sampling_throughput
	$(PY) -m benchmarks.ppo_step
	$(PY) -m benchmarks.ppo_memory
	$(PY) -m benchmarks.campaign_overhead
	$(PY) -m benchmarks.launch_overhead

clean:
	rm -rf runs .pytest_cache
