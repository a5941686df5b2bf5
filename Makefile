# Every target is a thin wrapper: the work lives in the `arcade` command and the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo demo-web mosquitto postgresql nginx nats umqtt browser deploytools clean font

setup: $(STAMP) umqtt mosquitto postgresql nginx nats browser deploytools node_modules/.package-lock.json font

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,bench]'
	@touch $@

umqtt: $(STAMP)
	$(BIN)/python -m tools.mpy.fetch_umqtt

# MicroPython's 8x8 font, rendered by the VM, for the host's framebuf stand-in (simulated screens)
font: $(STAMP) node_modules/.package-lock.json
	$(BIN)/python -m tools.mpy.font

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  { echo "installing mosquitto with apt..."; \
	    $$(command -v sudo) apt-get update -q && $$(command -v sudo) apt-get install -y -q mosquitto; }

# The PostgreSQL ledger's tests start their own cluster (initdb + postgres in a temp dir); only the binaries are needed.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { echo "installing postgresql (server binaries for the tests' private cluster) with apt..."; \
	    $$(command -v sudo) apt-get update -q && $$(command -v sudo) apt-get install -y -q postgresql; }

# The NATS-cluster tests start three private nats-server nodes (JetStream + MQTT; tools/lab/nats.py).
nats:
	@command -v nats-server >/dev/null 2>&1 || test -x /usr/sbin/nats-server || \
	  { echo "installing nats-server (the clustered broker's tests) with apt..."; \
	    $$(command -v sudo) apt-get update -q && $$(command -v sudo) apt-get install -y -q nats-server; }

# The multi-relay tests and `make soak RELAYS=N` put nginx in front of the relays (its own config in a temp dir).
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || \
	  { echo "installing nginx (the multi-relay tests' load balancer) with apt..."; \
	    $$(command -v sudo) apt-get update -q && $$(command -v sudo) apt-get install -y -q nginx; }

# zbarimg decodes the QR stickers in tests; headless chromium + chromedriver run the pay-page browser test.
browser:
	@{ command -v zbarimg && command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || \
	  { echo "installing zbar-tools, chromium, chromium-driver with apt..."; $$(command -v sudo) apt-get update -q && \
	    $$(command -v sudo) apt-get install -y -q zbar-tools chromium chromium-driver; }

# The deployment kit's tests validate what `arcade init` writes with the real programs (docs/deploy.md).
deploytools:
	@{ command -v caddy && { command -v nginx || test -x /usr/sbin/nginx; } && command -v systemd-analyze && \
	   command -v openssl; } >/dev/null 2>&1 || \
	  { echo "installing caddy, nginx, systemd (systemd-analyze), openssl with apt..."; $$(command -v sudo) apt-get update -q && \
	    $$(command -v sudo) apt-get install -y -q caddy nginx systemd openssl; }

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/arcade demo

# Stays up until Ctrl-C: a demo page, two cabinets, Stripe's test cards (README, "Try it in a browser").
demo-web: setup
	$(BIN)/arcade demo --web

clean:
	rm -rf $(VENV) build .pytest_cache

# MicroPython 1.27 (WebAssembly, from npm) runs tests/fw under node; mpy-cross builds what is flashed.
.PHONY: mpy footprint
node_modules/.package-lock.json: package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "installing nodejs and npm with apt..."; $$(command -v sudo) apt-get update -q && $$(command -v sudo) apt-get install -y -q nodejs npm; } || { echo "make setup: npm is missing and could not be installed: install Node.js 18+ with npm, then run make setup again" >&2; exit 1; }
	@npm ci --no-audit --no-fund || { echo "make setup: npm ci failed (offline? the npm registry must be reachable once to fetch @micropython/micropython-webassembly-pyscript)" >&2; exit 1; }
	@touch $@

mpy: $(STAMP)
	$(BIN)/python -m tools.mpy.build

footprint: $(STAMP) umqtt node_modules/.package-lock.json
	$(BIN)/python -m tools.mpy.footprint_report

# Flash a provisioned cabinet's board: make flash PORT=/dev/ttyUSB0 CABINET=galaga-1 (docs/flashing.md)
.PHONY: flash
flash: $(STAMP) umqtt
	$(BIN)/arcade flash "$(CABINET)" --port "$(PORT)"

# The fuzzing campaign (docs/security.md, "Web side"): 10,000 examples per target; `make test` runs 150.
.PHONY: fuzz
fuzz: $(STAMP) umqtt node_modules/.package-lock.json
	ARCADE_FUZZ_EXAMPLES=$(or $(EXAMPLES),10000) ARCADE_FUZZ_MPY_CASES=$(or $(MPY_CASES),10000) ARCADE_FUZZ_REPORT=build/fuzz-report.txt $(BIN)/python -m pytest -q -s -p no:cacheprovider --timeout 0 tests/test_fuzz.py

# Numbers, not tests: relay vs naive design (docs/benchmarks.md); soak under random faults (docs/reliability.md)
.PHONY: bench soak
bench: $(STAMP) umqtt mosquitto postgresql nginx nats
	$(BIN)/arcade bench $(ARGS)
# make soak BACKEND=sqlite|postgresql RELAYS=N (N > 1: PostgreSQL, nginx in front) BROKER=mosquitto|nats-cluster
soak: $(STAMP) umqtt mosquitto postgresql nginx nats
	$(BIN)/arcade soak --payments 1000 --cabinets 20 --seed $(or $(SEED),4242) --backend $(or $(BACKEND),sqlite) --relays $(or $(RELAYS),1) --broker $(or $(BROKER),mosquitto)
