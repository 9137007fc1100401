PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints-ci.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints-ci.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/cook demo

# three pytest-xdist workers on 2 cores (the tests wait on servers and subprocesses: 13.5 min against 16.5 with two),
# a test file each at a time, the longest first (tests/conftest.py's order: xdist would otherwise reorder files by
# their number of tests)
test: setup
	$(BIN)/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder tests

bench: setup
	$(BIN)/python -m pip install -q -c constraints-ci.txt -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench_tokenize.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_unparquet.py
	$(BIN)/python benchmarks/bench_merge.py
	$(BIN)/python benchmarks/bench_wikipedia.py
	$(BIN)/python benchmarks/bench_wikidump.py
	$(BIN)/python benchmarks/bench_youtube.py
	$(BIN)/python benchmarks/bench_limits.py

clean:
	rm -rf $(VENV) data .pytest_cache
