# asr-ingest: the two set-up commands are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test check lint format bench samples clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/asr-ingest run $(ARGS)

# Branch coverage of the in-process code is measured and printed; below [tool.coverage.report]
# fail_under the run fails. Processes the tests start (gunicorn, celery) are not measured.
test: install
	$(PY) -m pytest --cov --cov-report=term:skip-covered $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

check: lint test

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: install
	@for bench in tests/benchmarks/*_bench.py; do echo "== $$bench"; $(PY) $$bench || exit 1; done

samples:
	bash sandbox/make_samples.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache archive
