# iotdev: the two commands a newcomer runs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
FUZZ_SECONDS ?= 20
FUZZ_CAMPAIGN_SECONDS ?= 600

.PHONY: audit all test lint typecheck fuzz fuzz-long fuzz-campaign pytest bench demo mosquitto proxies clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The benchmark's extra (matplotlib, for bench-results.png) on top of the test one.
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

# Debian's mosquitto (broker in /usr/sbin) and mosquitto-clients for the interop
# tests; installed with apt when missing and we are root.  Without root it only
# warns here: the tests then skip, or fail when CI=true.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then \
	  if ! command -v mosquitto_pub >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto-clients >/dev/null; fi; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing mosquitto with apt-get"; \
	  (apt-get update -q >/dev/null || true); \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto mosquitto-clients >/dev/null; \
	else \
	  echo "warning: mosquitto is not installed and we are not root; interop tests will skip (fail with CI=true)"; \
	fi

# Debian's tinyproxy (HTTP CONNECT) and dante-server (danted: SOCKS4/5) for the
# proxy tests (and openssl, which hashes the throwaway SOCKS5 account's
# password), installed with apt when missing and we are root.  The tests run
# their own instances on free loopback ports with throwaway configs, so the
# packages' system services must not start: when no policy-rc.d exists, one that
# refuses every start (exit 101) is in place for the install only.  Without root
# it only warns here: the tests then skip, or fail when CI=true.
proxies:
	@missing=""; \
	if ! command -v tinyproxy >/dev/null 2>&1 && [ ! -x /usr/bin/tinyproxy ] \
	  && [ ! -x /usr/sbin/tinyproxy ]; then missing=" tinyproxy"; fi; \
	if ! command -v danted >/dev/null 2>&1 && [ ! -x /usr/sbin/danted ]; then \
	  missing="$$missing dante-server"; fi; \
	if ! command -v openssl >/dev/null 2>&1; then missing="$$missing openssl"; fi; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing$$missing with apt-get (system services kept stopped)"; \
	  (apt-get update -q >/dev/null || true); \
	  policy=/usr/sbin/policy-rc.d; made=""; \
	  if [ ! -e $$policy ]; then \
	    printf '#!/bin/sh\nexit 101\n' >$$policy && chmod 755 $$policy && made=1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; rc=$$?; \
	  if [ -n "$$made" ]; then rm -f $$policy; fi; \
	  exit $$rc; \
	else \
	  echo "warning:$$missing not installed and we are not root; proxy tests will skip (fail with CI=true)"; \
	fi

# The other brokers the conformance checker is tested against: amqtt (a test
# dependency, in the venv) and aedes (npm, into .npm-brokers/, run by
# tests/_aedes_broker.js).  Installed when missing; a failed install is an error
# under CI=true, a warning otherwise (the tests then skip).
AEDES_VERSION ?= 0.51.3
.PHONY: brokers
brokers: $(STAMP)
	@$(PY) -c "import amqtt" 2>/dev/null || $(PY) -m pip install -q 'amqtt>=0.12,<0.13' \
	  || { echo "error: cannot install amqtt"; case "$$CI" in true|1) exit 1;; esac; }
	@if [ ! -d .npm-brokers/node_modules/aedes ]; then \
	  if command -v npm >/dev/null 2>&1; then \
	    echo "installing aedes $(AEDES_VERSION) into .npm-brokers/"; \
	    mkdir -p .npm-brokers && npm install -q --no-audit --no-fund --prefix .npm-brokers \
	      aedes@$(AEDES_VERSION) >/dev/null || { echo "error: npm install aedes failed"; \
	      case "$$CI" in true|1) exit 1;; esac; }; \
	  else echo "error: npm not found (aedes tests skip; fail with CI=true)"; \
	    case "$$CI" in true|1) exit 1;; esac; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check iotdev iotdev_mqtt tests fuzz bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict iotdev_mqtt iotdev

fuzz: $(STAMP)
	$(PY) -m fuzz --seconds $(FUZZ_SECONDS)

# Known vulnerabilities in the installed dependencies (pip-audit asks PyPI's
# advisory database, so it needs the network; not part of `make test`).
audit: $(STAMP)
	$(PY) -m pip install -q pip-audit
	$(BIN)/pip-audit --local --skip-editable

fuzz-long: $(STAMP)
	$(PY) -m fuzz --seconds 600

# Coverage-guided (atheris) campaign: every target FUZZ_CAMPAIGN_SECONDS, one
# after another, niced (the machine is shared); new inputs are merged into
# fuzz/corpus/<target>/ and the figures printed as a table (README.md).
fuzz-campaign: $(STAMP)
	nice -n 10 $(PY) -m fuzz --campaign $(FUZZ_CAMPAIGN_SECONDS)

pytest: $(STAMP) mosquitto proxies brokers
	$(BIN)/pytest -q

test: $(STAMP) mosquitto proxies lint typecheck fuzz pytest

# About five minutes on two cores: every figure against its peers, then
# bench-results.{json,md,png} and the benchmark block of README.md.
bench: $(STAMP) $(BENCH_STAMP) mosquitto
	$(PY) -m bench --readme README.md

demo: $(STAMP)
	$(PY) -m iotdev.emulator demo

# One hour of mixed traffic (a sync and an asyncio device client) through
# periodic network faults and emulator restarts, memory and threads sampled
# every minute (tests/soak.py; `make test` runs two minutes of it).
.PHONY: soak
soak: $(STAMP)
	$(PY) -m tests.soak --minutes 60

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
