# Entry points that work on a fresh machine with Python 3.11:
#   make demo   create .venv, install, run the end-to-end loop on the embedded defaults
#   make test   create .venv, install what the tests need, run the suite
#   make check  ruff and mypy (CI runs it before the tests)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test check bench-table clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,serve,redis,ops]'
	touch $@

ML100K ?= ../shared/data/ml-100k

demo: $(VENV)/.installed
	$(VENV)/bin/freshrec demo

test: $(VENV)/.installed
	bash scripts/ensure-redis
	bash scripts/ensure-system-deps
	$(PY) -m pytest -q

check: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src/freshrec

bench-table: $(VENV)/.installed
	$(VENV)/bin/freshrec bench table --json

clean:
	rm -rf $(VENV) build *.egg-info
