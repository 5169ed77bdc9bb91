# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned and installed first so that pip never resolves a multi-GB CUDA build for it
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: test demo venv clean monailabel-venv

$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile tests $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(PY) -m monai_lung demo $(DEMO_ARGS)

# MONAI Label 0.8.5 needs torch+torchvision that import together (not the 2.13 CPU wheel): its own venv,
# installed without dependency resolution from a pinned list (see requirements-monailabel.txt, docs/monailabel.md)
ML_VENV ?= .venv-monailabel
ML_PY := $(ML_VENV)/bin/python

$(ML_VENV)/.installed: requirements-monailabel.txt setup.cfg setup.py pyproject.toml
	test -x $(ML_PY) || $(PYTHON) -m venv $(ML_VENV)
	$(ML_PY) -m pip install --quiet --upgrade pip
	$(ML_PY) -m pip install --quiet --no-deps -r requirements-monailabel.txt
	$(ML_PY) -m pip install --quiet --no-deps -e .
	$(ML_PY) -c "import monailabel.main, monailabel.transform.post, monai_lung.detection"
	touch $@

monailabel-venv: $(ML_VENV)/.installed

clean:
	rm -rf $(VENV) $(ML_VENV) build *.egg-info .pytest_cache
