# The README's two commands: `make book` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= quick

.PHONY: book test chapters site bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

## Execute every chapter on $(PROFILE) (default quick) and build the site into _build/html.
book: $(STAMP)
	$(PY) -m gradsim_utils.book --profile $(PROFILE) --strict

## Run the test suite (unit tests, smoke-profile notebooks, book build, browser test) in
## TEST_WORKERS processes (pytest-xdist; each test file stays in one process, 0 runs in this one).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

## Build the site from the notebooks already executed in book/.
site: $(STAMP)
	$(VENV)/bin/jupyter-book build .

## Speed measurements, printed as ratios. Every benchmark runs; a failed requirement is named at the end.
bench: $(STAMP)
	failed=""; for f in benchmarks/bench_*.py; do $(PY) $$f || failed="$$failed $$f"; done; \
	if [ -n "$$failed" ]; then echo "requirements failed in:$$failed"; exit 1; fi

clean:
	rm -rf _build book/*.ipynb book/_timings.json book/_results
