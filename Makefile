# The two commands of the README. Each sets up .venv on first use, with the CPU
# build of torch pinned so that pip never pulls a CUDA build.
PY      := .venv/bin/python
STAMP   := .venv/.installed
PROFILE ?= quick

.PHONY: figures claims test lint bench clean-venv

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

figures: $(STAMP)
	$(PY) -m figures --profile $(PROFILE) $(ARGS)

# Rewrite the numbers quoted in README.md and paper_notes/ from figures/*.json, list the rest.
claims: $(STAMP)
	$(PY) -m figures.claims

test: $(STAMP)
	$(PY) -m ruff check theory experiments figures tests
	$(PY) -m pytest -q $(ARGS)

# The four benchmarks (experiments/benchmarks/), each writing figures/bench_<name>.json;
# run on a quiet machine. `make bench ARGS=--quick` is a small trial that writes nothing.
bench: $(STAMP)
	$(PY) -m experiments.benchmarks.scores $(ARGS)
	$(PY) -m experiments.benchmarks.metrics $(ARGS)
	$(PY) -m experiments.benchmarks.ensemble $(ARGS)
	$(PY) -m experiments.benchmarks.dit $(ARGS)

clean-venv:
	rm -rf .venv
