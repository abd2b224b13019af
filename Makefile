# fm_local — every target installs what it needs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-all test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	@# -qq: errors only (setuptools prints an info banner on every editable install)
	$(BIN)/pip install -qq -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job: run an example workflow on the embedded supervisor, in the database
# $FM_DB if it is set, else .fm/example.db; then say which file that was.
run: $(STAMP)
	@db="$${FM_DB:-.fm/example.db}"; \
	case "$$db" in /*) abs="$$db";; *) abs="$$PWD/$$db";; esac; \
	echo "FM_DB=$$db $(BIN)/fm run examples/fan_out_fan_in.json --input '{\"count\": 6}' --workers 4"; \
	FM_DB="$$db" $(BIN)/fm run examples/fan_out_fan_in.json --input '{"count": 6}' --workers 4 && \
	echo "The database is $$abs. Next: FM_DB=$$abs .venv/bin/fm ls  (then fm show ID, fm timeline ID)"

# The whole test suite, crash and slow tests included (what CI runs). Two pytest
# processes: most tests wait on worker processes, timers and sockets, so two share
# the 2 cores well (about 9 min here, the longest tests first: tests/conftest.py);
# every test owns its database, tmp folder and ports, so they cannot see each other.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

# The quick loop while developing: everything but slow and crash tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not crash"

lint: $(STAMP)
	$(BIN)/ruff check fm_local tui tests benchmarks docs
	$(BIN)/ruff format --check fm_local tui tests benchmarks docs
	$(BIN)/mypy fm_local tui
	$(BIN)/python docs/gen_cli_docs.py --check

# The peers only make bench compares with (DBOS): installed on first use.
$(VENV)/.bench: $(STAMP)
	$(BIN)/pip install -qq -e '.[dev,bench]'
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .fm .pytest_cache .mypy_cache .ruff_cache
