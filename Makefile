# Every target is a thin wrapper: the work lives in the `arcade` command and the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo mosquitto umqtt clean

setup: $(STAMP) umqtt mosquitto

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

umqtt: $(STAMP)
	$(BIN)/python tools/fetch_umqtt.py

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  { echo "installing mosquitto with apt..."; \
	    $$(command -v sudo) apt-get update -q && $$(command -v sudo) apt-get install -y -q mosquitto; }

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/arcade demo

clean:
	rm -rf $(VENV) build .pytest_cache
