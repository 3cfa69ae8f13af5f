# One task runner for people and CI. `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXAMPLE_INPUT := {"orderId": "ORD-1001", "customerId": "CUST-7", "amount": 249.5}

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "maturin>=1.9.3,<2"
	touch $@

.PHONY: wheel
wheel: $(VENV)/.deps ## build the release abi3 wheel into dist/
	rm -rf dist
	$(VENV)/bin/maturin build --release --strip -o dist -q

.PHONY: install
install: wheel ## install the built wheel into the virtualenv
	$(PIP) install -q "$$(ls dist/itonami-*.whl)[dev]"
	$(PIP) install -q --force-reinstall --no-deps dist/itonami-*.whl

.PHONY: example
example: install ## run the order-processing example on the embedded SQLite store
	cd examples && ../$(VENV)/bin/itonami --db ../.itonami/example.db run order_processing.kotoba \
		--activities order_activities.py --input '$(EXAMPLE_INPUT)'

.PHONY: test
test: ## every test: cargo test, then pytest against the installed wheel (+ PostgreSQL)
	bash .ci/test.sh

.PHONY: test-rust
test-rust: ## the Rust crates' tests (the core and the expressions)
	cargo test -p itonami-core -p itonami-expr --release

.PHONY: test-py
test-py: install pytest ## pytest against the freshly installed wheel

.PHONY: pytest
pytest: ## pytest against what the virtualenv has installed (no rebuild)
	cd tests && ../$(PY) -m pytest -q -p no:cacheprovider --rootdir=.. -c ../pyproject.toml . $(PYTEST_ARGS)

.PHONY: ui-screenshots
ui-screenshots: ## refresh docs/ui/*.png: the web UI on a demo store, in the local chromium
	cd tests && ../$(PY) ui/screenshots.py

.PHONY: lint
lint: $(VENV)/.deps ## ruff, mypy stubtest, cargo fmt and clippy
	$(VENV)/bin/ruff check python tests benches examples
	$(VENV)/bin/ruff format --check python tests benches examples
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	$(PY) -m mypy.stubtest itonami._core

FUZZ_CASES ?= 200000
FUZZ_EXAMPLES ?= 2000
FUZZ_SECONDS ?= 600

.PHONY: fuzz
fuzz: ## bounded fuzzing: the core's proptest targets and a hypothesis fuzz of itonami._core
	PROPTEST_CASES=$(FUZZ_CASES) timeout $(FUZZ_SECONDS) cargo test -p itonami-core --release --test hostile
	cd tests && ITONAMI_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) timeout $(FUZZ_SECONDS) ../$(PY) -m pytest -q \
		-p no:cacheprovider --rootdir=.. -c ../pyproject.toml --timeout $(FUZZ_SECONDS) security

.PHONY: bench
bench: install ## run the benchmarks and print a table
	cd benches && ../$(PY) -m pytest -q -p no:cacheprovider --rootdir=.. -c ../pyproject.toml . \
		--benchmark-enable --benchmark-only --benchmark-columns=min,median,mean,ops,rounds \
		--benchmark-sort=name

.PHONY: bench-compare
bench-compare: install ## itonami beside the bare sqlite3 floor (+ SpiffWorkflow, DBOS if installed), ratios over rounds
	cd benches && ../$(PY) bench_compare.py --rounds $${ROUNDS:-3}

.PHONY: torture
torture: install ## long crash and lifecycle runs (many SIGKILLs, many random schedules)
	cd tests && ITONAMI_TORTURE_KILLS=500 bash ../.ci/postgres.sh run ../$(PY) -m pytest -q \
		-p no:cacheprovider --rootdir=.. -c ../pyproject.toml -m crash --timeout 3600 .
	cd tests && ITONAMI_LIFECYCLE_EXAMPLES=2000 ../$(PY) -m pytest -q -p no:cacheprovider \
		--rootdir=.. -c ../pyproject.toml --timeout 7200 engine/test_lifecycle_properties.py

.PHONY: bench-cluster
bench-cluster: install ## distributed execution on a private PostgreSQL: 1-3 workers, latencies, failover
	bash .ci/postgres.sh run $(PY) benches/bench_cluster.py

.PHONY: clean
clean: ## remove build outputs and the virtualenv
	rm -rf target dist $(VENV) .itonami
