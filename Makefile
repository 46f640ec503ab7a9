# Everything a fresh machine needs, from two commands: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVICES := PYTHON=$(abspath $(BIN))/python scripts/services.sh
export MONGODB_URI ?= mongodb://127.0.0.1:27017/app?directConnection=true
export KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:9092

.PHONY: venv services-up services-down tools test test-real unit demo bench lint check clean

# setup.py and the C source: an editable install compiles the extension into the tree, once.
$(BIN)/.installed: pyproject.toml setup.py cdc_migrator/core/_rawbson.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

services-up: venv
	$(SERVICES) up

services-down:
	$(SERVICES) down

# prometheus, promtool, helm and actionlint, built from the Go module proxy at the versions
# pinned in scripts/tools.sh into .services/bin; minutes the first time, nothing after.
tools:
	scripts/tools.sh build

# pytest's status is the target's status; the services come down whatever it was. The tools
# are built first, so no test waits for a build.
test: venv tools
	$(SERVICES) up
	status=0; $(BIN)/pytest -q $(PYTEST_ARGS) || status=$$?; $(SERVICES) down; exit $$status

# The suite against servers the user brings, named by MONGODB_URI (a replica set) and
# KAFKA_BOOTSTRAP_SERVERS (a broker): no service is started and no Go tool built (their tests
# skip). The tests marked local_server, which only the local servers can run, are left out
# (docs/testing.md); CDC_TEST_REAL_SERVERS=1 skips one even where PYTEST_ARGS selects it.
test-real:
	@if [ "$(origin MONGODB_URI)" = file ] || [ "$(origin KAFKA_BOOTSTRAP_SERVERS)" = file ]; then \
	  echo "make test-real: name your servers: MONGODB_URI=<a replica set's URI>" \
	    "KAFKA_BOOTSTRAP_SERVERS=<a broker> make test-real" >&2; exit 2; fi
	@$(MAKE) -s --no-print-directory venv
	CDC_TEST_REAL_SERVERS=1 $(BIN)/pytest -q -m "not local_server" $(PYTEST_ARGS)

# The tests that need no service (pure logic, the CLI's parsing and configuration): no Kafka,
# no MongoDB, no package build. Tests that need the services are marked `services`
# (tests/conftest.py), the wheel's build and installs `package`; property tests try a tenth
# of their examples (CDC_TEST_QUICK). `make test` runs everything, in full.
# They run in UNIT_WORKERS pytest-xdist workers: more than this machine's 2 cores, as a good
# part of their time is spent waiting (a command's child process, an unreachable server's
# timeout). Bytecode is written even where PYTHONDONTWRITEBYTECODE is set, so that pytest's
# rewritten test modules are cached: rewriting them again took 4 of a worker's 6 s of start-up.
UNIT_WORKERS ?= 4
unit: venv
	PYTHONDONTWRITEBYTECODE= CDC_TEST_QUICK=1 $(BIN)/pytest -q -n $(UNIT_WORKERS) \
	  -m "not services and not package" $(PYTEST_ARGS)

demo: venv
	$(SERVICES) up
	$(BIN)/python scripts/demo.py

bench: venv
	$(SERVICES) up
	$(BIN)/python bench/run.py $(BENCH_ARGS)

lint: venv
	$(BIN)/ruff check cdc_migrator tests transforms bench scripts

# The quality gates CI runs before the tests: ruff, and mypy over the package (it ships
# py.typed, so its types are part of its interface). Configuration: pyproject.toml.
check: lint
	$(BIN)/mypy

clean: services-down
	rm -rf .services $(VENV)
