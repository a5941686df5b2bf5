# Every target is a thin wrapper: the work lives in the `arcade` command and the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo mosquitto umqtt browser clean

setup: $(STAMP) umqtt mosquitto browser

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

# zbarimg decodes the QR stickers in tests; headless chromium + chromedriver run the pay-page browser test.
browser:
	@{ command -v zbarimg && command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || \
	  { echo "installing zbar-tools, chromium, chromium-driver with apt..."; $$(command -v sudo) apt-get update -q && \
	    $$(command -v sudo) apt-get install -y -q zbar-tools chromium chromium-driver; }

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/arcade demo

clean:
	rm -rf $(VENV) build .pytest_cache
