# consul-operator: the commands of the README.
#   make demo   the original walkthrough on the local staging environment
#   make check  the inner loop while working: lint, import contracts, unit and property tests (< 90 s)
#   make test   everything CI runs: deps, image, lint, unit and integration tests (goal: 10 min on an idle 2-core machine: README, *Tests*)
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: deps image up down status test check lint unit fuzz integration chaos durations demo demo-app demo-app-down bench bench-scale provision-test clean \
        nodes-image nodes-up nodes-down nodes-status

deps:           ## install what is missing: Debian packages, consul, .venv, a running dockerd
	@bash scripts/deps.sh

image: deps     ## build hello:local, hello:v2 and the two-tier example's visits-redis:local, visits-web:local without a registry
	@bash images/hello/build.sh
	@bash images/visits/build.sh

up: deps image  ## start the local staging environment (127.0.0.11-13)
	@bash scripts/staging.sh up

down:           ## stop it: exactly what `up` started, and the containers it labelled
	@bash scripts/staging.sh down

status:
	@bash scripts/staging.sh status

nodes-image: deps  ## the node image, once: debootstrap + provision.sh's packages, consul, virtualenv
	@bash scripts/nodes.sh build

nodes-up: deps  ## the node environment: host-1..4 as systemd containers on 198.18.1.11-14 (host-3, host-4: LBs behind .100), provisioned by provision.sh
	@bash scripts/nodes.sh up

nodes-down:     ## removes exactly what nodes-up made (containers, volumes, network); the image stays
	@bash scripts/nodes.sh down

nodes-status:
	@bash scripts/nodes.sh status

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: deps
	$(VENV)/bin/pytest tests/unit

check: lint  ## the inner loop: lint, import contracts, unit and property tests, in under 90 s
	$(VENV)/bin/pytest -n 2 -q tests/unit

fuzz: deps  ## the pure core's Hypothesis properties with a large budget and fresh randomness
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest tests/unit -k property

integration: deps image
	$(VENV)/bin/pytest tests/integration

# `make test` in two steps (README, *Tests*). First everything but the tests that restart the
# shared Docker engine, in TEST_WORKERS pytest-xdist workers, each with its own loopback block,
# name and so Consul cluster, KV and container label (tests/support/places.py); a whole module
# at a time, the node tests together, the longest first (tests/support/scheduling.py). Then the
# tests marked engine_restart, serially: an engine restart kills every container on the
# engine, the other workers' too; and those marked alone (a timing promise under the test's
# own load: the leader lease), which another worker's load must not decide. Both steps run whatever the first one's outcome; the 15
# slowest tests of both come last.
# TEST_WORKERS unset: one per core, two per core on a machine idle before the run, at most 4 (tests/support/workers.py:
# 3 beside a CPU hog failed 5 timed tests, 2 passed; idle, 4 ran the parallel step in 8:45, 3 in 9:44-10:17).
TEST_WORKERS ?=
JUNIT := .run/junit
test: deps image lint  ## the whole suite; CI runs this
	@mkdir -p $(JUNIT); rm -f $(JUNIT)/*.xml; status=0; \
	workers="$(TEST_WORKERS)"; [[ -n $$workers ]] || workers=$$($(PY) -m tests.support.workers); \
	$(VENV)/bin/pytest -n $$workers --dist loadscope -m "not engine_restart and not alone" \
	  --junitxml=$(JUNIT)/parallel.xml tests || status=$$?; \
	$(VENV)/bin/pytest -m "engine_restart or alone" --junitxml=$(JUNIT)/engine-restart.xml tests || status=$$?; \
	$(PY) -m tests.support.slowest 15 $(JUNIT)/parallel.xml $(JUNIT)/engine-restart.xml; \
	exit $$status

durations:  ## rewrite tests/support/durations.json (the scheduler's longest-first order) from the last make test
	$(PY) -m tests.support.slowest --save tests/support/durations.json $(JUNIT)/parallel.xml $(JUNIT)/engine-restart.xml

demo: up
	@bash scripts/demo.sh

demo-app: deps image  ## the two-tier example (web app + Redis: template, secret, volume) on its own environment (127.0.0.14-16)
	@bash scripts/demo-app.sh

demo-app-down:  ## stop demo-app's environment: what it started, its containers and volumes
	@bash scripts/demo-app.sh down

chaos: deps image  ## a longer chaos run: make chaos DURATION=600 SEED=42 (default: every fault once)
	$(PY) -m tests.chaos.harness $(if $(SEED),--seed $(SEED)) $(if $(DURATION),--duration $(DURATION))

bench: deps image  ## benchmarks on their own staging environment; report in bench/results/
	@$(PY) -c "import matplotlib" 2>/dev/null || $(VENV)/bin/pip install -q -e ".[test,bench]"
	$(PY) -m bench.suite
	$(MAKE) bench-scale

bench-scale: deps  ## the scale bench alone: 10-100 simulated hosts on 3 real Consul servers (SCALE_ARGS=--quick)
	@$(PY) -c "import matplotlib" 2>/dev/null || $(VENV)/bin/pip install -q -e ".[test,bench]"
	$(PY) -m bench.scale $(SCALE_ARGS)

provision-test: deps  ## slow, not in `make test`: scripts/provision.sh in a clean Debian 12 (debootstrap + docker import)
	@bash scripts/provision-test.sh

clean: down
	rm -rf .run
