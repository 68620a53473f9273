# Every target installs what it needs first, into the Python environment it runs in:
#  - the active virtual (or conda) environment when there is one;
#  - otherwise a project-local `.venv`, made by $(PYTHON) and reused when present, so a
#    system Python that refuses `pip install` (PEP 668, Debian/Ubuntu) works as well.
# The venv sees the interpreter's own packages (--system-site-packages), so a torch the user
# already installed (a CUDA build, say) is kept; torch 2.13.0 (CPU) is installed only when no
# torch is importable. The `gfnem` command then lives in .venv/bin/.
PYTHON ?= python3
PYTEST_ARGS ?=

ifneq ($(strip $(VIRTUAL_ENV)$(CONDA_PREFIX)),)
ENV_PYTHON := python
ENV_BIN :=
else
ENV_PYTHON := .venv/bin/python
ENV_BIN := $(CURDIR)/.venv/bin:
endif

.PHONY: install test bench demo

.venv/bin/python:
	$(PYTHON) -m venv --system-site-packages .venv

install: $(if $(ENV_BIN),.venv/bin/python)
	@$(ENV_PYTHON) -c "import torch" 2>/dev/null || $(ENV_PYTHON) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	@$(ENV_PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[test]"

test: install
	$(ENV_PYTHON) -m pytest -q tests --ignore=tests/benchmarks $(PYTEST_ARGS)

bench: install
	$(ENV_PYTHON) tests/benchmarks/run_all.py

demo: install
	PATH="$(ENV_BIN)$$PATH" bash scripts/demo.sh
