# iotdev: the two commands a newcomer runs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
FUZZ_SECONDS ?= 20

.PHONY: all test lint typecheck fuzz fuzz-long pytest bench demo mosquitto clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
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

lint: $(STAMP)
	$(BIN)/ruff check iotdev iotdev_mqtt tests fuzz bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict iotdev_mqtt iotdev

fuzz: $(STAMP)
	$(PY) -m fuzz --seconds $(FUZZ_SECONDS)

fuzz-long: $(STAMP)
	$(PY) -m fuzz --seconds 600

pytest: $(STAMP) mosquitto
	$(BIN)/pytest -q

test: $(STAMP) mosquitto lint typecheck fuzz pytest

bench: $(STAMP) mosquitto
	$(PY) -m bench

demo: $(STAMP)
	@echo "make demo: not yet. The local IoT Hub emulator and the device client land in"
	@echo "the next steps; until then, try the codec example in README.md:"
	$(PY) -c "from iotdev_mqtt import Publish, PacketReader, encode; \
	data = encode(Publish('devices/dev1/messages/events/', b'hello', qos=1, packet_id=1)); \
	print(data.hex(' ')); print(PacketReader('client').feed(data))"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
