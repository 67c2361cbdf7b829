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

# Every benchmark (tests/benchmarks/, docs/benchmarks.md), then one table of the issue's figures,
# also written to bench.json. The default scale keeps the whole under about 15 minutes: 4,000
# files for submit_bench, 1,000 recordings for run_bench, a 256 MB memory run. BENCH_FULL=1
# takes the issue's sizes (10,000 files, 10,000 recordings, 1 GB; about 10 minutes more).
# BENCH_<NAME>_ARGS add flags to one script (e.g. BENCH_WEBHOOK_ARGS="--requests 2000").
BENCH_DIR ?= .bench
ifdef BENCH_FULL
BENCH_SCALE_SUBMIT := --files 10000
BENCH_SCALE_RUN := --files 10000
BENCH_SCALE_ARCHIVE := --large
else
BENCH_SCALE_SUBMIT := --files 4000
BENCH_SCALE_RUN := --files 1000
BENCH_SCALE_ARCHIVE :=
endif
BENCH_WEBHOOK_ARGS ?=
BENCH_ARCHIVE_ARGS ?=
BENCH_SUBMIT_ARGS ?=
BENCH_LATENCY_ARGS ?=
BENCH_RUN_ARGS ?=

bench: install
	@rm -rf $(BENCH_DIR) && mkdir -p $(BENCH_DIR)
	@for bench in webhook archive submit latency run; do \
		echo "== tests/benchmarks/$${bench}_bench.py"; \
		case $$bench in \
			webhook) extra="$(BENCH_WEBHOOK_ARGS)";; \
			archive) extra="$(BENCH_SCALE_ARCHIVE) $(BENCH_ARCHIVE_ARGS)";; \
			submit) extra="$(BENCH_SCALE_SUBMIT) $(BENCH_SUBMIT_ARGS)";; \
			latency) extra="$(BENCH_LATENCY_ARGS)";; \
			run) extra="$(BENCH_SCALE_RUN) $(BENCH_RUN_ARGS)";; \
		esac; \
		$(PY) tests/benchmarks/$${bench}_bench.py --json-out $(BENCH_DIR)/$$bench.json $$extra \
			|| echo "!! $$bench failed"; \
	done
	$(PY) tests/benchmarks/summary.py $(BENCH_DIR) --out bench.json

samples:
	bash sandbox/make_samples.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache archive .asr-ingest
