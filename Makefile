# Two entry points: `make demo` (main job on the embedded default) and `make test` (the whole suite).
# Each does all set-up on a fresh Debian machine: apt data packages, a virtual environment, pip installs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fonts-noto-color-emoji unicode-data wordnet-base chromium
# the pretraining corpus (clearglass.experiments.mini.corpus): all its sources, and the small ones its tests read
PRETRAIN_APT := fonts-symbola fonts-noto-core unicode-cldr-core fonts-materialdesignicons-webfont fonts-font-awesome \
  oxygen-icon-theme breeze-icon-theme tango-icon-theme adwaita-icon-theme
TEST_CORPUS_APT := fonts-symbola fonts-font-awesome fonts-materialdesignicons-webfont tango-icon-theme
ARCH := $(shell uname -m)
ifeq ($(ARCH),x86_64)
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
else
TORCH_PIN := torch==2.9.1 torchvision==0.24.1
endif

.PHONY: setup apt venv demo test bench

apt:
	@missing=""; for p in $(APT_PACKAGES) $(TEST_CORPUS_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

setup: apt venv

demo: setup
	$(VENV)/bin/clearglass demo --out demo_out $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done
