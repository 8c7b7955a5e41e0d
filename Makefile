# The two set-up commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,tf]' 'torch==2.13.0'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m opencann.cli.main demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(VENV)/.installed
	$(PY) -m ruff check opencann tests benchmarks

bench: $(VENV)/.installed
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/onnx_models.py

clean:
	rm -rf $(VENV) build *.egg-info
