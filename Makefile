# make test: the whole suite; make demo: train + evaluate a small AlignSeg on embedded data.
# Both create a local virtual environment (.venv) and install what they need.
PYTHON ?= python3
VENV ?= .venv
TF_EXTRA ?= tensorflow-cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(TF_EXTRA)
PYTEST_ARGS ?= -n 2

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(TF_EXTRA),dev]"
	touch $(STAMP)

test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) examples/demo.py --output runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache
