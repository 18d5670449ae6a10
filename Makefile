# Three entry points, each doing all set-up on a fresh Debian machine (apt packages, a virtual environment, pip):
#   make demo      the embedded default (fine-tunes the shipped clearglass-mini base; no corpus needed)
#   make test      the linter and the whole suite (make test-fast: without the slow end-to-end runs)
#   make pretrain  rebuilds the clearglass-mini base from its corpus and ships it into src/clearglass/pretrained/
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# what the demo reads: emoji glyphs and names, Symbola for the cross-style set
DEMO_APT := fonts-noto-color-emoji unicode-data fonts-symbola
# every source of the pretraining corpus (clearglass.experiments.mini.corpus_sources)
PRETRAIN_APT := $(DEMO_APT) fonts-noto-core unicode-cldr-core fonts-materialdesignicons-webfont fonts-font-awesome \
  oxygen-icon-theme breeze-icon-theme tango-icon-theme adwaita-icon-theme
# what the tests read: everything above (the corpus code is tested), WordNet, Chromium for the gallery check;
# tests/test_makefile.py fails when a /usr/share path in src/ or tests/ belongs to a package not named here
TEST_APT := $(PRETRAIN_APT) wordnet-base chromium
ARCH := $(shell uname -m)
ifeq ($(ARCH),x86_64)
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
else
TORCH_PIN := torch==2.9.1 torchvision==0.24.1
endif

.PHONY: apt-demo apt-test apt-pretrain venv venv-test demo results search test test-fast lint pretrain bench

define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
endef

apt-demo:
	$(call apt_install,$(DEMO_APT))

apt-test:
	$(call apt_install,$(TEST_APT))

apt-pretrain:
	$(call apt_install,$(PRETRAIN_APT))

# the package and what it needs to run (venv), and the test extras on top (venv-test)
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

venv-test: $(VENV)/.installed-test

demo: apt-demo venv
	$(VENV)/bin/clearglass demo --out demo_out $(DEMO_ARGS)

# the documented 3-seed result and the validation search whose choice the demo uses (see docs/demo.md)
results: apt-demo venv
	$(VENV)/bin/clearglass demo --seeds 3 --out runs/demo-3seeds --publish docs/results/base-to-novel

search: apt-demo venv
	$(VENV)/bin/clearglass demo --search src/clearglass/configs/demo/search-grid.json --out runs/search \
	  --publish src/clearglass/configs/demo/default.search.json

# the whole suite after the linter (a lint error fails it); test-fast skips the end-to-end runs marked slow
test: apt-test venv-test lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: apt-test venv-test lint
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: venv-test
	$(VENV)/bin/ruff check src tests bench

pretrain: apt-pretrain venv
	$(PY) -m pip install -q -e '.[pretrain]'
	$(VENV)/bin/clearglass pretrain --out runs/pretrain-mini --ship $(PRETRAIN_ARGS)

bench: apt-test venv-test
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done
