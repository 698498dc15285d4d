# Both entry points do their own set-up on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build first: an unpinned torch pulls gigabytes of CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test lint bench-prepare clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,postgres]'
	@# The dashboard's browser test drives Debian's Chromium (never a downloaded browser).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium not installed: the dashboard browser test skips (fails under CI)"
	touch $@

setup: $(BIN)/.installed

# The main job: build the built-in task (cached under SHAPETUNE_HOME), then a small tuning
# study on it (embedded SQLite, local Ray) that ends with the best shape vs sparse. Run again,
# it continues (or just reports) the same study.
demo: setup
	$(BIN)/shapetune prepare
	$(BIN)/shapetune run examples/demo.yaml

lint: setup
	$(BIN)/ruff check shaping trainers service tests bench
	$(BIN)/ruff format --check shaping trainers service tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
