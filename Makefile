# The two set-up commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean clean-cache chromium

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,tf]' 'torch==2.13.0'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m opencann.cli.main demo

test: $(VENV)/.installed chromium
	$(PY) -m pytest -q -n 2 --dist loadfile

# The report.html test opens the page in Debian's chromium: installed here when missing and we are root
# (otherwise that test skips, saying why).
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "chromium could not be installed: the report.html test will skip"; \
	fi

lint: $(VENV)/.installed
	$(PY) -m ruff check opencann tests benchmarks

bench: $(VENV)/.installed
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/onnx_models.py --size full --batch 1,32 --markdown

# Numba's cached machine code (stale when a module a kernel calls into changed: docs/architecture.md)
clean-cache:
	find opencann -name '*.nbi' -delete -o -name '*.nbc' -delete

clean: clean-cache
	rm -rf $(VENV) build *.egg-info
