# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# URLs written by `make services` (embedded fallback); the environment wins.
ENV_FILE := .blogqueue/env
LOAD_ENV := set -a; [ -f $(ENV_FILE) ] && . ./$(ENV_FILE); set +a;

.PHONY: install services test-deps browser-deps promtool-deps console-screenshot migrate test chaos lint demo bench bench-http bench-ratelimit bench-token-fairness bench-load bench-wix bench-events bench-batch worker serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,demo]'
	touch $(STAMP)

install: $(STAMP)

services: $(STAMP)
	$(PY) scripts/services.py

migrate: services
	$(LOAD_ENV) $(VENV)/bin/blogqueue migrate

# The partition test (tests/test_liveness.py) needs iproute2's `ip` for network namespaces;
# a bare Debian image may lack it. Installed when root with apt-get, else the test says why it skips.
test-deps:
	@command -v ip >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q iproute2 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q iproute2 >/dev/null; }; }; } || \
	  echo "note: iproute2 is not installed; the network-partition test will skip"

# The console's browser tests drive Debian's `chromium` (Playwright, never a downloaded browser), and
# the alert rules are checked with promtool (Debian's `prometheus` package). Installed with apt-get
# when missing and possible (root + apt); otherwise the tests that need them skip, saying why.
APT_INSTALL = [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(1) >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(1) >/dev/null; }; }

browser-deps:
	@command -v chromium >/dev/null 2>&1 || { $(call APT_INSTALL,chromium); } || \
	  echo "note: chromium is not installed and could not be (needs root and apt-get); the console's browser tests will skip"

promtool-deps:
	@command -v promtool >/dev/null 2>&1 || { $(call APT_INSTALL,prometheus); } || \
	  echo "note: promtool is not installed and could not be (needs root and apt-get); the promtool checks will skip"

# Re-takes docs/console.png from a live service, worker and browser (the browser test's scene).
console-screenshot: services browser-deps
	$(LOAD_ENV) BLOGQUEUE_CONSOLE_SCREENSHOT=docs/console.png $(PY) -m pytest tests/test_console_browser.py -k screenshot -q

test: services test-deps browser-deps promtool-deps
	$(LOAD_ENV) $(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(LOAD_ENV) $(PY) -m pytest -m "not chaos" $(PYTEST_ARGS)

chaos: services test-deps
	$(LOAD_ENV) $(PY) -m pytest -m chaos $(PYTEST_ARGS)

# DEMO_JOBS=N scales the big store's share of the load.
demo: services
	$(LOAD_ENV) $(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Provider-limit utilisation at 450 RPM / 450,000 TPM against the OpenAI window, OpenAI quantized and
# Anthropic fakes, 4 workers, 1-6 s latency, 3+ minutes of backlog each (docs/providers.md; ~15 min).
bench-ratelimit: services
	$(LOAD_ENV) $(PY) benchmarks/ratelimit.py $(BENCH_ARGS)

# Token fairness: two tenants on one bucket, calls 4x apart in size (docs/providers.md; ~3 min).
bench-token-fairness: services
	$(LOAD_ENV) $(PY) benchmarks/token_fairness.py $(BENCH_ARGS)

# Wix app mode: 1,000 callers in 4 processes share one token request; cache-hit cost (docs/sources-publishers-credits.md).
bench-wix: services
	$(LOAD_ENV) $(PY) benchmarks/wix_tokens.py

worker: migrate
	$(LOAD_ENV) $(VENV)/bin/blogqueue worker

serve: migrate
	$(LOAD_ENV) $(VENV)/bin/blogqueue serve

# The service alone under wrk, 1 and 2 processes (docs/benchmarks.md; ~2 min). wrk is a Debian
# package: installed here when root with apt-get, else the target says how.
bench-http: services
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }; }; } || \
	  { echo "bench-http needs wrk: sudo apt-get install wrk (or build https://github.com/wg/wrk)"; exit 2; }
	$(LOAD_ENV) $(PY) benchmarks/http_service.py $(BENCH_ARGS)

# 1,000 event-stream clients held open for 60 s while jobs run (docs/benchmarks.md); BENCH_ARGS="--seconds 15" shortens it.
bench-events: services
	$(LOAD_ENV) $(PY) benchmarks/events.py $(BENCH_ARGS)

# Open loop, stepped until p99 > 250 ms: the highest rate held (docs/benchmarks.md); BENCH_ARGS="--outage --seconds 30" runs one rate with a Redis outage.
bench-load: services
	$(LOAD_ENV) $(PY) benchmarks/load.py $(BENCH_ARGS)

clean:
	$(PY) scripts/services.py --stop || true
	rm -rf $(VENV) .blogqueue .pytest_cache .ruff_cache .mypy_cache

# Benchmarks (DESIGN §8): each prints a table and writes benchmarks/results/<name>.json.
# `make bench` runs them one after another; `make bench-engine` (etc.) runs one, with BENCH_ARGS.
BENCHES := engine enqueue fairness memory $(if $(wildcard benchmarks/ratelimit.py),ratelimit token_fairness) load

bench: services
	@set -e; for b in $(BENCHES); do echo "== benchmarks/$$b.py"; $(LOAD_ENV) $(PY) benchmarks/$$b.py; done

# The batch lane (docs/batch-lane.md): 5,000 batch-lane jobs + 50 small now-lane stores.
bench-batch: services
	$(LOAD_ENV) $(PY) benchmarks/batch_lane.py $(BENCH_ARGS)

bench-%: services
	$(LOAD_ENV) $(PY) benchmarks/$*.py $(BENCH_ARGS)
