# iotdev: the two commands a newcomer runs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
FUZZ_SECONDS ?= 20
FUZZ_CAMPAIGN_SECONDS ?= 600
# The oldest and newest CPython this machine has (pyenv), for the device path
# and the installed wheel: `make pythons` and `make wheel-smoke` use them.
PY_OLDEST ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) \
  $(shell command -v python3.10))
PY_NEWEST ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) \
  $(shell command -v python3.13))
SMOKE_PYTHONS ?= $(PY_OLDEST) $(PY_NEWEST)
# What runs on every supported Python: the codec and engines, the transports,
# both device clients, the MQTT clients, file upload and the samples.
DEVICE_TESTS := tests/test_codec_vectors.py tests/test_codec_encode_errors.py \
  tests/test_codec_properties.py tests/test_engine_pair.py tests/test_server_engine.py \
  tests/test_state_tables.py tests/test_topics.py tests/test_hub_topics.py tests/test_auth.py \
  tests/test_tls_layer.py tests/test_ws_layer.py tests/test_proxy.py tests/test_http_layer.py \
  tests/test_import_purity.py tests/test_reconnect_policy.py tests/test_completion.py \
  tests/test_transport_refusals.py tests/test_device_client_sync.py \
  tests/test_device_client_aio.py tests/test_mqtt_client_sync.py tests/test_mqtt_client_async.py \
  tests/test_upload_client.py tests/test_samples.py tests/test_trust_store.py \
  tests/test_compat.py
# Only what the tests above import besides iotdev[emulator].
PYTHONS_TEST_DEPS := pytest hypothesis "paho-mqtt>=1.6,<2"

.PHONY: audit all test lint typecheck fuzz fuzz-long fuzz-campaign pytest bench demo mosquitto \
  proxies clean wheel wheel-smoke pythons sizes

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

lint: $(STAMP)
	$(BIN)/ruff check iotdev iotdev_mqtt tests fuzz bench samples

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

pytest: $(STAMP) mosquitto proxies
	$(BIN)/pytest -q

# The artefact users install: sdist + wheel (dist/), installed in fresh venvs
# on the oldest and newest Python (tests/test_wheel.py: `iotdev-hub demo`, a
# device round trip, a --no-deps install running the codec example; and the
# README's console blocks, tests/test_readme.py).
wheel: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .

wheel-smoke: $(STAMP)
	@for py in $(SMOKE_PYTHONS); do \
	  if [ ! -x "$$py" ]; then \
	    if [ "$${CI:-}" = true ]; then echo "error: interpreter $$py missing"; exit 1; fi; \
	    echo "warning: interpreter $$py missing; skipped"; continue; fi; \
	  echo "== the installed wheel on $$py"; \
	  IOTDEV_SMOKE_PYTHON=$$py $(BIN)/pytest -q -p no:cacheprovider tests/test_wheel.py \
	    tests/test_readme.py -k "installed or console or contents" || exit 1; \
	done

# The device-path tests on the oldest and newest Python (one venv each, made
# here: .venv-py3.10, .venv-py3.13).
.venv-py%/.installed: pyproject.toml
	@py="$(if $(filter 3.10,$*),$(PY_OLDEST),$(PY_NEWEST))"; \
	if [ ! -x "$$py" ]; then echo "error: no Python $* (pyenv install $*)"; exit 1; fi; \
	$$py -m venv .venv-py$* && .venv-py$*/bin/python -m pip install -q --upgrade pip && \
	.venv-py$*/bin/python -m pip install -q -e '.[emulator]' $(PYTHONS_TEST_DEPS)
	touch $@

pythons: .venv-py3.10/.installed .venv-py3.13/.installed mosquitto proxies
	.venv-py3.10/bin/pytest -q -p no:cacheprovider $(DEVICE_TESTS)
	.venv-py3.13/bin/pytest -q -p no:cacheprovider $(DEVICE_TESTS)

# Installed size of each variant against azure-iot-device and paho-mqtt
# (README "Install"; pip needs the package index).
sizes: wheel
	$(PY) .ci/sizes.py --dist dist

test: $(STAMP) mosquitto proxies lint typecheck fuzz pytest pythons wheel-smoke

# About five minutes on two cores: every figure against its peers, then
# bench-results.{json,md,png} (README "Performance" links to them).
bench: $(STAMP) $(BENCH_STAMP) mosquitto
	$(PY) -m bench

# Only what the demo needs: the wheel's run-time dependencies and the
# emulator's extra, in a venv of its own (no test tools).
DEMO_VENV := .venv-demo
$(DEMO_VENV)/.installed: pyproject.toml $(shell find iotdev iotdev_mqtt -name '*.py')
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q '.[emulator]'
	touch $@

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/iotdev-hub demo

# One hour of mixed traffic (a sync and an asyncio device client) through
# periodic network faults and emulator restarts, memory and threads sampled
# every minute (tests/soak.py; `make test` runs two minutes of it).
.PHONY: soak
soak: $(STAMP)
	$(PY) -m tests.soak --minutes 60

clean:
	rm -rf $(VENV) .venv-py3.10 .venv-py3.13 $(DEMO_VENV) build dist *.egg-info .pytest_cache \
	  .mypy_cache .ruff_cache .hypothesis
