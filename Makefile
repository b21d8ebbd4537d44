# make test: the whole suite; make demo: train + evaluate a small AlignSeg on embedded data;
# make bench: the benchmark suite; make ablation: the paper's Tables 1-4 in miniature. Each creates a local virtual environment (.venv) and
# installs what it needs.
PYTHON ?= python3
VENV ?= .venv
# TensorFlow flavour: tensorflow-cpu (small, CI), tensorflow, or cuda (GPU).
TF_EXTRA ?= tensorflow-cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(TF_EXTRA)
TEST_STAMP := $(VENV)/.installed-test
# PyTorch is an optional peer (checkpoint conversion, equivalence test, benchmarks); this
# pin is the CPU build that installs quickly here.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?= -n 2
BENCH_ARGS ?=

.PHONY: install test demo bench ablation clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(TF_EXTRA)]"
	touch $(STAMP)

# keras-hub (the encoder tests) is installed without tensorflow-text, which keras-hub
# asks for but its vision backbones do not use and which pins its own TensorFlow.
KERAS_HUB ?= keras-hub==0.32.0

# tensorflow-serving-api (the TF Serving protocol tests) is installed without its
# dependencies: it asks for the full `tensorflow` wheel beside tensorflow-cpu, while its
# protos need only the TensorFlow, protobuf and grpcio already installed.
TF_SERVING_API ?= tensorflow-serving-api==2.21.0

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[$(TF_EXTRA),dev,onnx,jax]" "$(TORCH)"
	$(PY) -m pip install -q --no-deps "$(KERAS_HUB)" "$(TF_SERVING_API)"
	$(PY) -m pip install -q kagglehub regex rich sentencepiece tokenizers
	touch $(TEST_STAMP)

# The TensorFlow session in parts, each with fresh workers (a worker's memory only grows
# with every model it builds): the library's unit tests in three parts, then the end-to-end
# tests of tests/. Run as one session, the unit tests' two workers reached 11.3 and 11.6 GB
# and left 1.4 GB of this 24 GB machine free (ALIGNSEG_RSS_LOG, 2026-12-06); CI lost a
# worker there in the quantisation test, which adds 2 GB. The parts: models and backbones
# (about 8 GB of growth over both workers), the command line (6 GB), the rest (9 GB, the
# exports and quantisation among them). Then the multi-process JAX
# tests on their own (their job processes need memory too); then a small JAX session
# (two workers: 311 s against 380 s in one on 2 cores, 2026-12-05) and a small torch
# session (one: 49 s) (Keras fixes its backend per process): each backend's
# comparisons with TensorFlow and every layer's test (ablation layers included) on it, and on
# JAX and torch the data checks of `fit` (their Keras builds the step from the data first).
# Both sessions collect the layer tests, so pytest never ends with "no tests" (exit 5).
# MALLOC_ARENA_MAX=2 caps glibc's malloc arenas (up to 8 per core otherwise), a common
# source of resident-memory growth with TensorFlow's many threads; its effect on this
# suite is not measured yet (ALIGNSEG_RSS_LOG, conftest.py, records it per test).
TEST_ENV := TF_CPP_MIN_LOG_LEVEL=2 MALLOC_ARENA_MAX=2
UNIT_PART_1 := alignseg_keras/models alignseg_keras/backbones
UNIT_PART_2 := alignseg_keras/cli
test: $(TEST_STAMP)
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) $(UNIT_PART_1)
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) $(UNIT_PART_2)
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) alignseg_keras $(foreach part,$(UNIT_PART_1) $(UNIT_PART_2),--ignore=$(part))
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) tests --ignore=tests/test_multiprocess_jax.py
	$(TEST_ENV) $(PY) -m pytest tests/test_multiprocess_jax.py
	KERAS_BACKEND=jax $(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) tests/test_jax_backend.py alignseg_keras/layers/blocks_test.py alignseg_keras/models/data_checks_test.py
	KERAS_BACKEND=torch $(TEST_ENV) $(PY) -m pytest tests/test_torch_backend.py alignseg_keras/layers/blocks_test.py alignseg_keras/models/data_checks_test.py

# BENCH_ARGS="--quick" takes minutes; "--only alignment,inference" runs a subset.
bench: $(STAMP)
	$(PY) -m pip install -q "$(TORCH)" jax
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m benchmarks.run $(BENCH_ARGS)

# The paper's ablation in miniature on the synthetic scenes (docs/ablation.md): the full
# run is sized for about 90 minutes on 2 CPU cores; ABLATION_ARGS="--quick" (Table 1,
# seeds 0 and 1: 8 of its 36 runs) for about 15. Stored runs are reused: delete runs/ablation to redo.
ABLATION_ARGS ?=
ablation: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m benchmarks.ablation $(ABLATION_ARGS)

demo: $(STAMP)
	$(PY) examples/demo.py --output runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache
