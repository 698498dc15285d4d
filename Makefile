# Both entry points do their own set-up on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build first: an unpinned torch pulls gigabytes of CUDA packages.
TORCH  ?= torch==2.13.0
# Every other package at the version the tests passed with (`make lock` refreshes it).
LOCK   := constraints.txt

.PHONY: setup demo test test-fast test-verl lint lock lock-verl bench-prepare clean

$(BIN)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev,postgres,botorch]'
	@# The dashboard's browser test drives Debian's Chromium (never a downloaded browser).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium not installed: the dashboard browser test skips (fails under CI)"
	touch $@

setup: $(BIN)/.installed

# The main job: build the built-in task (cached under SHAPETUNE_HOME), then a tuning study
# on it (embedded SQLite, local Ray), then its best shapes raced against pure sparse on
# fresh seeds, ending with the verdict: beats, loses, equivalent, or undecided. Run again,
# it continues (or just reports) the same study and reuses the finished race runs.
DEMO_ARMS ?= 1
DEMO_MAX_SEEDS ?= 10
demo: setup
	$(BIN)/shapetune prepare
	$(BIN)/shapetune run examples/demo.yaml
	$(BIN)/shapetune reevaluate demo --arms $(DEMO_ARMS) --seeds 3 --max-seeds $(DEMO_MAX_SEEDS)

lint: setup
	$(BIN)/ruff check shaping trainers service tests bench
	$(BIN)/ruff format --check shaping trainers service tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest
	$(MAKE) test-verl

# While developing: the suite less its whole-study runs (marked e2e: Ray, killed workers and
# services, two nodes) and the PostgreSQL copies of the storage tests. `make test` runs all.
test-fast: lint
	$(BIN)/pytest -m "not slow and not gpu and not e2e" -k "not postgresql"

# The verl export's tests, against the real verl in an environment of its own: verl's
# transformers range is not the main lock's.
VERL_VENV ?= .venv-verl
VERL_LOCK := constraints-verl.txt
$(VERL_VENV)/bin/.installed: pyproject.toml $(VERL_LOCK)
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/pip install --quiet -c $(VERL_LOCK) --upgrade pip
	$(VERL_VENV)/bin/pip install --quiet $(TORCH)
	$(VERL_VENV)/bin/pip install --quiet -c $(VERL_LOCK) -e '.[verl]' pytest pytest-timeout
	touch $@

test-verl: $(VERL_VENV)/bin/.installed
	$(VERL_VENV)/bin/pytest tests/verl

# Refresh the lock on purpose: the newest releases pyproject's ranges admit, in a throwaway
# venv, frozen into $(LOCK). Then run `make test` and commit the lock with what it changed.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet $(TORCH)
	.lock-venv/bin/pip install --quiet -e '.[dev,postgres,botorch]'
	{ sed -n '1,3p' $(LOCK); .lock-venv/bin/pip freeze --all --exclude-editable \
		| grep -v -i '^torch==' | sort -f; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv

lock-verl:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet $(TORCH)
	.lock-venv/bin/pip install --quiet -e '.[verl]' pytest pytest-timeout
	{ sed -n '1,3p' $(VERL_LOCK); .lock-venv/bin/pip freeze --all --exclude-editable \
		| grep -v -i '^torch==' | sort -f; } > $(VERL_LOCK).new
	mv $(VERL_LOCK).new $(VERL_LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) $(VERL_VENV) .pytest_cache .mypy_cache .ruff_cache
