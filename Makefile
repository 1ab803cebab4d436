# Every target works on a fresh clone and installs what it needs first.
# TORCH_SPEC: on a CUDA machine `torch==2.13.0` from PyPI is the CUDA build; on a CPU-only machine
# add `TORCH_EXTRA="--index-url https://download.pytorch.org/whl/cpu"` to avoid GBs of CUDA wheels.
PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
TORCH_SPEC  ?= torch==2.13.0
TORCH_EXTRA ?=
PYTEST_ARGS ?= -n 2

.PHONY: install demo test lint clean

install: $(VENV)/.installed

# The package is installed editable (pyproject.toml): `import deeplab` from anywhere, edits live.
# pydensecrf (the reference CRF backend) compiles C++: where it does not build, the install goes
# on with a warning and the CRF runs on the torch backend (crf.backend: auto).
$(VENV)/.installed: pyproject.toml requirements.txt requirements-dev.txt requirements-pydensecrf.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_EXTRA) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q -e ".[pydensecrf]" || echo "WARNING: pydensecrf did not build (it \
	needs a C++ compiler); the CRF runs on the torch backend, which gives the same results"
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

# DEMO_ARGS: more overrides, e.g. DEMO_ARGS=hydra.run.dir=outputs/ci-demo (.ci/run)
demo: install
	$(PY) src/train.py experiment=demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests experiments
	$(VENV)/bin/ruff format --check src tests experiments

clean:
	rm -rf $(VENV) outputs multirun data/synthetic
