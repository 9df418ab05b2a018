# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-gpu demo bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu"

# GPU machines bring their own CuPy and NumPy; the GPU tests need nothing else from the venv.
test-gpu:
	PYTHONPATH=. $(PYTHON) -m pytest -m gpu -p no:cacheprovider tests/test_gpu_kernels.py

demo: $(STAMP)
	$(BIN)/int8flow demo --out demo-out

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_entropy.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .hypothesis
