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
	touch $@

setup: $(BIN)/.installed

# The main job: build the built-in task (cached under SHAPETUNE_HOME), show what it built,
# then train its policy for a few PPO steps on dense (RED) + sparse rewards.
demo: setup
	$(BIN)/shapetune prepare
	$(BIN)/shapetune tasks show imdb-sentiment
	$(BIN)/shapetune train --task imdb-sentiment --weights red=0.5,sparse=0.5 --steps 10

lint: setup
	$(BIN)/ruff check shaping trainers service tests bench
	$(BIN)/ruff format --check shaping trainers service tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
