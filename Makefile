# The README's commands. Each installs what it needs first (uv, then the locked dependencies).
SHELL := /bin/bash
UV_VERSION := 0.13.9
PYTHON ?= python3
UV := $(PYTHON) -m uv

.PHONY: install run up down test lint bench clean

install:
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	@$(UV) sync --frozen --quiet
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium is missing (the live page e2e test needs it): run 'sudo apt-get install -y chromium'" >&2; }

run: install
	$(UV) run pinwheel run

up: install
	$(UV) run pinwheel up

down: install
	$(UV) run pinwheel down

lint: install
	$(UV) run ruff check .
	$(UV) run mypy

test: install lint
	$(UV) run pytest -ra

bench: install
	$(UV) run python -m bench

clean:
	rm -rf .local
