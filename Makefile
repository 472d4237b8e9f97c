# em_lightning — `make install` then `make test`. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# setuptools < 81 still ships pkg_resources (mmcv's setup.py needs it); torch 2.14 needs >= 77.0.3
SETUPTOOLS := setuptools==80.9.0

.PHONY: install test test-slow lint bench bench-accuracy clean-venv help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## create .venv with torch, mmcv (compiled ops, cached wheel), mmdet, mmrotate, the project
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=23.2"
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q "$(SETUPTOOLS)" wheel
	bash .ci/build_mmcv.sh $(PY)
	$(PIP) install -q -c .ci/constraints.txt -e ".[dev]" "$(SETUPTOOLS)"
	$(PY) -c "import em_lightning.compat as c; c.apply(); import mmcv.ops, mmdet, mmrotate; print('OpenMMLab stack OK: mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'mmrotate', mmrotate.__version__)"

test:  ## default test suite (minutes on 2 CPU cores); slow learning tests excluded
	$(PY) -m pytest -q -p no:cacheprovider

test-slow:  ## the learning tests (train small models for minutes)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

lint:  ## ruff
	$(VENV)/bin/ruff check em_lightning tests benchmarks

bench:  ## benchmarks (print tables; see BENCHMARKS.md)
	$(PY) benchmarks/run_all.py

bench-accuracy:  ## train both CPU recipes on the demo data and print the accuracy table (~2 h)
	$(PY) benchmarks/accuracy.py --train

clean-venv:  ## remove .venv (the mmcv wheel cache outside the checkout is kept)
	rm -rf $(VENV)
