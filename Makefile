# Two commands do all set-up: `make train` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pins that install from the local wheel cache on the reference machine;
# override with `make TORCH_PIN="torch torchvision" ...` elsewhere.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=
# test processes (pytest-xdist); each runs single-threaded, so 2 suit a 2-core machine
TEST_WORKERS ?= 2

.PHONY: venv train test lint typecheck check clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev,clip,sweep,cluster,loggers]"
	touch $@

venv: $(VENV)/.installed

train: venv
	$(PY) train.py $(ARGS)

test: venv
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist worksteal $(ARGS)

lint: venv
	$(PY) -m ruff check zsl tests experiments train.py
	$(PY) -m ruff format --check zsl tests experiments train.py

check: lint typecheck

typecheck: venv
	$(PY) -m mypy zsl

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
