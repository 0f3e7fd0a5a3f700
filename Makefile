# Two commands for a newcomer: `make demo` (the built-in CPU run) and `make test`.
# Each creates .venv on first use and installs what it needs; torch is installed first and then
# pinned with a constraints file so no later install can swap it for a multi-GB CUDA build.
#
# Two tested stacks; each Python gets the megatron-core release tested on it (MCORE):
#   make test          Python 3.11, torch 2.13 (CPU build), megatron-core 0.16.1 (newest for 3.11)
#   make test-py312    Python 3.12, torch 2.11 (PyPI's CUDA build, runs on CPU too), the newest
#                      megatron-core 0.19.x: what pip resolves on the GPU clusters
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
MCORE ?= $(shell $(PYTHON) -c "import sys; print('megatron-core==0.16.1' if sys.version_info < (3, 12) else 'megatron-core>=0.19,<0.20')")
PYTHON312 ?= python3.12
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-py312 clean

install: $(STAMP)

# The constraint names the installed distribution's version: for PyPI's CUDA builds that is
# `2.11.0`, not torch.__version__'s `2.11.0+cu130`, which pip cannot satisfy.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > $(VENV)/constraints.txt
	echo "$(MCORE)" >> $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/redi-megatron demo --out demo_out

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest tests $(PYTEST_ARGS)

# The quick demo (5 minutes: two runs, to show its table does not depend on the thread count) runs
# on the default stack only; everything else runs on both.
test-py312:
	$(MAKE) test PYTHON=$(PYTHON312) VENV=.venv312 TORCH=torch==2.11.0 \
		PYTEST_ARGS="--deselect tests/distributed/test_demo_quick.py"

clean:
	rm -rf $(VENV) .venv312 demo_out
