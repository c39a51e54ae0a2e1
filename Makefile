# Slipway: `make synth` (the main job) and `make test` (the whole suite) install
# everything they need on a fresh Debian machine: a virtualenv with the pinned
# Python packages, and the pinned `cdk` CLI under .tools/.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PYTHON := $(VENV)/bin/python
TOOLS := .tools
CDK_CLI_VERSION := 2.1148.1
CDK := $(TOOLS)/node_modules/.bin/cdk

# jsii's banner about Node 20's end of life is noise on every command.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
# The cdk CLI runs `python3 app.py` (cdk.json): make that the virtualenv's Python.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# No AWS account here: keep the CLI from probing for credentials or phoning home.
export AWS_EC2_METADATA_DISABLED := true
export CDK_DISABLE_CLI_TELEMETRY := true

# The instance tests boot a Debian root filesystem in systemd-nspawn (needs root); the
# console tests drive Debian's Chromium headless.
INSTANCE_PACKAGES := mmdebstrap systemd-container chromium

.PHONY: help synth test lint bench clean instance-packages local

help:
	@echo "make synth   install what is needed and synthesize every Platform-<env> stack into cdk.out/"
	@echo "make test    install what is needed and run the whole test suite"
	@echo "make local   serve ENV=staging [PASSWORD=...] on this machine: its stack deployed into moto; prints the API URL"
	@echo "make lint    ruff and mypy"
	@echo "make bench   run the benchmarks under benchmarks/ (synthesis, the instance agent)"

$(VENV)/.runtime: requirements.txt cli/pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e cli
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(CDK): Makefile
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error aws-cdk@$(CDK_CLI_VERSION)
	touch $@

synth: $(VENV)/.runtime $(CDK)
	$(CDK) synth --quiet --no-notices
	@echo "Templates:"; for t in cdk.out/*.template.json; do echo "  $(CURDIR)/$$t"; done

instance-packages:
	@if command -v mmdebstrap >/dev/null && command -v systemd-nspawn >/dev/null && command -v chromium >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(INSTANCE_PACKAGES) >/dev/null; \
	else \
		echo "note: not root; the instance tests will skip (as root: apt-get install $(INSTANCE_PACKAGES))"; \
	fi

test: $(VENV)/.dev $(CDK) instance-packages
	$(PYTHON) -m pytest

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(VENV)/.dev instance-packages
	$(PYTHON) benchmarks/synth.py
	$(PYTHON) benchmarks/agent.py
	$(PYTHON) benchmarks/publish.py
	$(PYTHON) benchmarks/rollout.py
	$(PYTHON) benchmarks/slack.py
	$(PYTHON) benchmarks/console.py

ENV ?= staging
local: $(VENV)/.dev
	PYTHONPATH=$(CURDIR):$(CURDIR)/lambdas $(PYTHON) -m local --env $(ENV) $(if $(PASSWORD),--password $(PASSWORD))

clean:
	rm -rf cdk.out $(TOOLS) $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
