# drkit: `make demo` runs the whole loop, `make test` runs every check. Each sets itself up:
# system packages when missing (restic; for tests and benchmarks also PostgreSQL and MariaDB),
# restic 0.18 from Debian trixie into .cache/ for the tests (the machine's apt sources are not
# changed), a virtualenv in .venv, and drkit with its dev extras.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.drkit-installed

.PHONY: setup system test-system demo test lint typecheck unit bench clean

setup: system $(STAMP)

system:
	@scripts/ensure-system.sh

test-system:
	@scripts/ensure-system.sh test
	@scripts/fetch-restic.sh trixie >/dev/null

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@# Bytecode for drkit's own modules, as a regular install has: start-up reads it even
	@# where PYTHONDONTWRITEBYTECODE is set (this machine, CI).
	$(BIN)/python -m compileall -q src >/dev/null
	@touch $(STAMP)

demo: setup
	$(BIN)/drkit demo

lint: setup
	$(BIN)/ruff check src tests bench

typecheck: setup
	$(BIN)/mypy

# Test files run in parallel, one file per worker (-n auto: one worker per core).
test: test-system lint typecheck
	$(BIN)/pytest -n auto --dist loadfile

unit: test-system setup
	$(BIN)/pytest tests/unit

bench: test-system setup
	@# restverify: the peer bench/drill_overhead.py compares drills with (no dependencies).
	$(BIN)/pip install --quiet restverify==0.3.1
	$(BIN)/python -m bench.backup_fixed_cost
	$(BIN)/python -m bench.many_targets
	$(BIN)/python -m bench.backup_overhead
	$(BIN)/python -m bench.drill_overhead
	$(BIN)/python -m bench.check_cost
	$(BIN)/python -m bench.pg_backup
	$(BIN)/python -m bench.report_scale
	$(BIN)/python -m bench.audit_scale

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
