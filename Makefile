# The two commands of the README: `make demo` and `make test`. Everything else is a step they use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME := $(CURDIR)/.dagster_home
PYTEST_ARGS ?=
# go-tpc, the workload (PingCAP's `tiup bench tpcc`), pinned: the module proxy's "latest" is an older 2021 release.
GO_TPC_VERSION := v1.0.12

.PHONY: install demo test test-unit check lab-up lab-down lab-status dev clean

install: $(VENV)/.installed $(VENV)/bin/go-tpc $(DAGSTER_HOME)/dagster.yaml

# [test] is everything: the lab, dg and the UI, the deploy extra and the test tools (pyproject.toml).
$(VENV)/.installed: pyproject.toml scripts/bootstrap-system.sh
	bash scripts/bootstrap-system.sh
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# Built from the Go module proxy into the virtualenv's bin, where tidb_pipeline.workload.gotpc looks for it.
$(VENV)/bin/go-tpc: | $(VENV)/.installed
	GOBIN=$(abspath $(VENV))/bin go install github.com/pingcap/go-tpc/cmd/go-tpc@$(GO_TPC_VERSION)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# The demo starts the lab itself, on fresh data (a progress bar per phase).
demo: install
	$(VENV)/bin/tidb-pipeline demo

# pytest exits 5 when it collected nothing: that is a failure here, not a pass. `dg check yaml` and
# `dg check defs` run inside it (tidb_pipeline_tests/test_dg.py), and so do ruff and mypy (test_lint.py).
# `make test` is everything (as CI); `make test-unit` is what needs no lab (tests using a lab part are marked
# `integration` by tidb_pipeline_tests/conftest.py). The full tier runs the property tests' whole Hypothesis
# budgets, the unit tier a quarter (tidb_pipeline_tests/tiers.py).
# Both tiers run on PYTEST_WORKERS processes (pytest-xdist), the integration tier after the unit tier and a whole
# module to a worker (`--dist loadfile`: a module's fixtures stay in one process) in collection order (longest
# first: conftest's LONG_FIRST; xdist would otherwise order modules by test count); each worker has a lab of its
# own (its own folder and ports: tidb_pipeline_tests/conftest.py), the first the default one. `make test` prints
# each stage's wall time and the 30 slowest tests over both (tidb_pipeline_tests/slowest.py), and fails when either stage fails or collects nothing.
PYTEST_WORKERS ?= 2
STAGE = t0=$$(date +%s); $(PY) -m pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	echo "$(2): pytest exit $$rc, $$(( $$(date +%s) - t0 ))s wall"; \
	if [ $$rc -eq 5 ]; then echo "$(2): pytest collected no tests: failing" >&2; rc=1; fi

test: install
	@mkdir -p artifacts; rm -f artifacts/test-unit.xml artifacts/test-integration.xml
	export TIDB_PIPELINE_TEST_TIER=full; \
	$(call STAGE,-m "not integration" -n $(PYTEST_WORKERS) --junitxml=artifacts/test-unit.xml,unit tier); unit=$$rc; \
	$(call STAGE,-m integration -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --junitxml=artifacts/test-integration.xml,integration tier); integ=$$rc; \
	$(PY) -m tidb_pipeline_tests.slowest -n 30 artifacts/test-unit.xml artifacts/test-integration.xml; \
	if [ $$unit -ne 0 ] || [ $$integ -ne 0 ]; then echo "make test: unit tier exit $$unit, integration tier exit $$integ" >&2; exit 1; fi

test-unit: install
	$(call STAGE,-m "not integration" -n $(PYTEST_WORKERS) --durations=15,unit tier); exit $$rc

lab-up: install
	$(VENV)/bin/tidb-pipeline lab up
lab-down:
	$(VENV)/bin/tidb-pipeline lab down
lab-status:
	$(VENV)/bin/tidb-pipeline lab status

# dg runs in the project's .venv; VIRTUAL_ENV says it is the active one.
DG := VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/dg

check: install
	$(DG) check yaml
	$(DG) check defs

dev: install
	$(DG) dev

clean: lab-down
	rm -rf .lab .dagster_home artifacts
