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

# The instance tests and the local platform boot a Debian root filesystem in systemd-nspawn
# (needs root); the local platform puts an HAProxy in front of each fleet; the console tests
# drive Debian's Chromium headless.
INSTANCE_PACKAGES := mmdebstrap systemd-container haproxy chromium

.PHONY: help synth test lint bench clean instance-packages local demo

help:
	@echo "make synth   install what is needed and synthesize every Platform-<env> stack into cdk.out/"
	@echo "make test    install what is needed and run the whole test suite"
	@echo "make local   serve ENV=staging [PASSWORD=...] on this machine: its stack deployed into moto, its fleets real"
	@echo "             instances behind HAProxy (as root; SIMULATED=1 keeps moto's instances); prints the URLs"
	@echo "make demo    as root: the sample app published and deployed to three local instances; serves until Ctrl-C"
	@echo "make lint    ruff and mypy"
	@echo "make bench   run the benchmarks under benchmarks/ (synthesis, the instance agent, publish, rollouts, the local platform)"

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

# HAProxy's package would start its own service (default config, no listener): the platform runs
# one HAProxy per fleet itself, so the service is kept from starting (policy-rc.d) and disabled.
instance-packages:
	@if command -v mmdebstrap >/dev/null && command -v systemd-nspawn >/dev/null && command -v haproxy >/dev/null \
		&& command -v chromium >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		policy=""; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; policy=yes; fi; \
		trap '[ -z "$$policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(INSTANCE_PACKAGES) >/dev/null; \
		if [ -d /run/systemd/system ]; then systemctl disable --quiet haproxy 2>/dev/null || true; fi; \
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
	$(PYTHON) benchmarks/fleet.py

ENV ?= staging
local: $(VENV)/.dev instance-packages
	PYTHONPATH=$(CURDIR):$(CURDIR)/lambdas $(PYTHON) -m local --env $(ENV) $(if $(PASSWORD),--password $(PASSWORD)) $(if $(SIMULATED),--simulated)

demo: $(VENV)/.dev $(CDK) instance-packages
	PYTHONPATH=$(CURDIR):$(CURDIR)/lambdas $(PYTHON) -m local.demo $(if $(PASSWORD),--password $(PASSWORD))

clean:
	rm -rf cdk.out $(TOOLS) $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
