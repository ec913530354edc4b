# Set-up never lets pip resolve an unpinned torch: the pinned build goes in first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# pytest-xdist workers: the tests spend much of their time waiting (FLARE's polling, process start-up), and each
# test process trains on one thread (tests/conftest.py), so two workers fit 2 cores; 1 runs the tests in one process
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup,)

.PHONY: setup demo test test-unit test-integration test-e2e test-poc test-fl lint docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[test,he,docs,dp]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m clara_fl demo --workspace demo_workspace

# The test suite without the end-to-end FLARE runs: the unit and integration tiers together.
test: setup
	$(PY) -m pytest -q $(XDIST) -m "not e2e" tests

# The fast tier: every test that tests/conftest.py does not list as integration (under 2 minutes on 2 cores).
test-unit: setup
	$(PY) -m pytest -q $(XDIST) -m unit tests

# The slow tests that are not e2e: training, torchrun, bundles and the CLI in subprocesses, confined processes.
test-integration: setup
	$(PY) -m pytest -q $(XDIST) -m integration tests

# End-to-end FLARE simulations: every algorithm, privacy filter and HE on two MMARs (.ci/run runs it).
test-e2e: setup
	$(PY) -m pytest -q $(XDIST) -m e2e tests --ignore-glob='tests/test_poc_*.py'

# POC deployments on loopback (server + sites as real processes): the happy path, HE, a site killed, the
# server restarted, an abort, broken sites. The slowest target; .ci/run runs it too.
test-poc: setup
	$(PY) -m pytest -q $(XDIST) -m e2e tests/test_poc_*.py

# Both of the above in one run (what .ci/run does): the POC deployments wait on FLARE's heartbeats and process
# starts while the simulations train, so three workers share 2 cores between them.
test-fl: setup
	$(PY) -m pytest -q -n 3 --dist loadgroup --durations=25 -m e2e tests

lint: setup
	$(PY) -m ruff check clara_fl tests bench
	$(PY) -m ruff format --check clara_fl tests bench
	$(PY) -m mypy

# The docs site (mkdocs.yml): the guides in docs/ and the API reference from the docstrings; every warning
# (a broken link, a docstring that does not match its signature) fails the build.
docs: setup
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf demo_workspace .pytest_cache

# Every CUDA path (AMP, TF32, cuDNN benchmark, NCCL DDP, an FL round) in one run on a GPU machine;
# figures in bench/results/gpu_check.json. Without a GPU it says so and checks nothing.
.PHONY: gpu-check
gpu-check: setup
	$(PY) bench/gpu_check.py

# Benchmarks against named baselines (not part of `make test`): table on stdout, bench/results/latest.json.
.PHONY: bench
bench: setup
	$(PY) bench/run.py
