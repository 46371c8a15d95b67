# Every target works on a fresh clone: it makes the venv it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8000
STAMP  := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: run run-llm test test-fast test-busy test-llm proto check lint bench clean screenshot

# What serving needs (make run): the bridge and its dependencies alone.
$(RUN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(RUN_STAMP)

# What the tests, the linters and the bench need besides.
$(STAMP): $(RUN_STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench,cog]'
	touch $(STAMP)

# The gRPC stubs in bridge/_proto are committed (pip install . needs no
# generator) and made by the oldest grpcio-tools whose code the ranges in
# pyproject.toml admit: 1.62 writes protobuf 4.25 code, which runs on
# protobuf 4.25 to 7 and grpcio 1.62 on (a newer generator would pin the
# runtime to its own version). It has its own venv: it needs protobuf < 5.
# tests/test_packaging.py checks that the stubs match proto/.
PROTO_VENV := .venv-proto
proto:
	test -x $(PROTO_VENV)/bin/python || $(PYTHON) -m venv $(PROTO_VENV)
	$(PROTO_VENV)/bin/python -m pip install --quiet 'grpcio-tools==1.62.3'
	rm -rf bridge/_proto
	mkdir -p bridge/_proto/v1
	$(PROTO_VENV)/bin/python -m grpc_tools.protoc -Ibridge/_proto=proto/bridge \
		--python_out=. --grpc_python_out=. --pyi_out=. \
		proto/bridge/v1/predictor.proto
	touch bridge/_proto/__init__.py bridge/_proto/v1/__init__.py
	$(if $(CONFIG),$(MAKE) --no-print-directory check CONFIG=$(CONFIG))

# A config checked as serve would: CONFIG=bridge.toml's bridged services'
# protos compiled and their methods found, or one line saying what is wrong.
check: $(RUN_STAMP)
	$(PY) -m bridge check --config $(CONFIG)

# The demo backends and the bridge in the foreground; Ctrl-C stops them all.
# CONFIG=bridge.toml adds its settings and models ([cors], [auth], ...).
# WORKERS=2 runs two bridge processes sharing a Redis: the config's [store]
# url, else a redis-server started and stopped with them (if installed).
run: $(RUN_STAMP)
	exec $(PY) -m bridge run-demo --host 127.0.0.1 --port $(PORT) $(if $(CONFIG),--config $(CONFIG)) $(if $(WORKERS),--workers $(WORKERS))

# Replicate's and OpenAI's JS clients, for tests/test_replicate_js.py and
# tests/test_openai_js.py (no lockfile kept).
JS_CLIENT := tests/js/node_modules/replicate/package.json
$(JS_CLIENT): tests/js/package.json
	command -v npm >/dev/null || { apt-get update && apt-get install -y nodejs npm; }
	cd tests/js && npm install --no-package-lock --no-audit --no-fund --loglevel=error
	touch $(JS_CLIENT)

# Debian's Chromium, for tests/test_browser.py (Playwright drives it; it
# never downloads a browser of its own).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

# Debian's Redis, for the shared store's tests (each starts its own server).
REDIS := /usr/bin/redis-server
$(REDIS):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server

# Debian's nginx, for tests/test_deploy.py (RUNLEVEL=1: installed, not
# started as a service; the test runs its own, on 127.0.0.1).
NGINX := /usr/sbin/nginx
$(NGINX):
	apt-get update && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y nginx

test: $(STAMP) $(JS_CLIENT) $(CHROMIUM) $(REDIS) $(NGINX)
	$(PY) -m ruff check bridge tests bench
	$(PY) -m mypy
	GRPC_VERBOSITY=ERROR $(PY) -m pytest -q --ignore=tests/llm

# A real language model (bridge/sdk/hf.py): the llm extra, with PyTorch's
# CPU build first (TORCH=...: another build or version; this machine has
# torch 2.13.0 on disk, elsewhere pip downloads it), then tests/llm: a small
# GPT-2 trained on the fables at test time, served through a bridge.
TORCH ?= torch==2.13.0
LLM_STAMP := $(VENV)/.llm-installed
$(LLM_STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[llm]'
	touch $(LLM_STAMP)

test-llm: $(STAMP) $(LLM_STAMP)
	GRPC_VERBOSITY=ERROR $(PY) -m pytest -q tests/llm

# make run, with demo/fable-gpt2 beside the demo models (trained once, in
# about 16 s on 2 cores, and kept in ~/.cache/grpc-sse-bridge).
run-llm: $(LLM_STAMP)
	exec $(PY) -m bridge run-demo --llm --host 127.0.0.1 --port $(PORT) $(if $(CONFIG),--config $(CONFIG))

# The edit loop's tier (16 to 18 s here, on both cores with pytest-xdist;
# 25 s in one process). It writes bytecode even where the environment says
# PYTHONDONTWRITEBYTECODE (this machine does): recompiling the bridge and
# assert-rewriting the tests cost each worker 1.5 s of its 4 s start. The
# modules that need no browser, no backend process and no pty: units, the
# contract tests of the store, the
# event log and the backend (each real one beside its fake), the core on the
# fake backend under Trio's autojump clock, the protocol and framing, and
# the API against in-process bridges (the Redis store through its contract
# tests; two real bridges on one Redis only in make test). make test runs
# everything, these included.
FAST := tests/test_events.py tests/test_store.py tests/test_backend.py tests/test_service.py \
	tests/test_headers.py tests/test_layout.py tests/test_catalog.py \
	tests/test_sse.py tests/test_compat.py tests/test_exports.py \
	tests/test_predictions.py tests/test_grpc_loop.py tests/test_sdk.py tests/test_api.py \
	tests/test_bad_input.py tests/test_limits.py tests/test_auth.py tests/test_metrics.py \
	tests/test_generic_schema.py tests/test_generic_descriptors.py tests/test_generic_output.py

test-fast: $(STAMP) $(REDIS)
	$(PY) -m ruff check bridge tests bench
	$(PY) -m mypy
	PYTHONDONTWRITEBYTECODE= GRPC_VERBOSITY=ERROR $(PY) -m pytest -q -n 2 --dist worksteal -p no:schemathesis $(FAST)

# The suite beside two CPU hogs (one per core here), as on a shared CI
# machine: timing must come from events and Trio's clocks, not luck. The
# hogs stop with the suite, or after 15 minutes whatever happens.
test-busy: $(STAMP) $(JS_CLIENT) $(CHROMIUM) $(REDIS) $(NGINX)
	hogs=""; for i in 1 2; do timeout 900 $(PY) -c 'while True: pass' & hogs="$$hogs $$!"; done; \
	trap 'kill $$hogs 2>/dev/null' EXIT INT TERM; \
	GRPC_VERBOSITY=ERROR $(PY) -m pytest -q --ignore=tests/llm $(PYTEST_ARGS)

# Retake docs/screenshot.png (the browser test takes it).
screenshot: $(STAMP) $(CHROMIUM)
	UPDATE_SCREENSHOT=1 GRPC_VERBOSITY=ERROR $(PY) -m pytest -q tests/test_browser.py -k story

lint: $(STAMP)
	$(PY) -m ruff check bridge tests bench
	$(PY) -m ruff format --check bridge tests bench
	$(PY) -m mypy

# The bridge against the direct gRPC drain and the FastAPI peer, in one run;
# writes bench/out/results.md and results.json (about eleven minutes).
bench: $(STAMP)
	GRPC_VERBOSITY=ERROR $(PY) bench/run.py

clean:
	rm -rf $(VENV) $(PROTO_VENV) .pytest_cache tests/js/node_modules
