# Two entry points: `make app` (install the runtime, start the app) and `make test`.
# Everything is installed into the project's own virtual environment (.venv), so a stock Debian or
# Ubuntu Python, which refuses pip installs (PEP 668, "externally managed"), works as it is.
# PYTHON only creates that environment; every later step runs .venv's Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS ?=

.PHONY: app test lint system-deps reference-converter

$(PY):
	$(PYTHON) -m venv $(VENV)

# pip runs again only when what it installs changes (stamps record the last installs).
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed

# llama.cpp: pip builds llama-cpp-python from source (PyPI has no wheels of it), here with a fix
# for GCC 12's AMX intrinsic force-included, without which its AMX kernels crash on CPUs that
# have AMX (native/amx-tilecfg-fix.h, docs/amx.md). --no-cache-dir: a wheel that pip built and
# cached earlier without the fix must not be reused. Other installs (a Space's) get no fix, and
# the app then keeps llama.cpp off its AMX kernels (tutor/cpu_kernels.py).
# The stamp names the pinned version: a change of the pin rebuilds it, other requirements do not.
LLAMA_CPP_PIN := $(shell grep -m1 '^llama-cpp-python==' requirements.txt)
LLAMA_CPP_STAMP := $(VENV)/.built-$(subst ==,-,$(LLAMA_CPP_PIN))
AMX_FIX := $(CURDIR)/native/amx-tilecfg-fix.h
$(LLAMA_CPP_STAMP): native/amx-tilecfg-fix.h | $(PY)
	CMAKE_ARGS="-DCMAKE_C_FLAGS=-include$(AMX_FIX) -DCMAKE_CXX_FLAGS=-include$(AMX_FIX)" \
	  $(PY) -m pip install --no-cache-dir --force-reinstall --no-deps "$(LLAMA_CPP_PIN)"
	@touch $@

# The runtime (requirements.txt, what the Space installs) and the project, editable.
$(RUNTIME_STAMP): requirements.txt pyproject.toml $(LLAMA_CPP_STAMP) | $(PY)
	$(PY) -m pip install -e .
	@touch $@

# On top: the training stack and the test tools.
$(DEV_STAMP): $(RUNTIME_STAMP) requirements-train.txt requirements-dev.txt
	$(PY) -m pip install -e ".[train,dev]"
	@touch $@

app: $(RUNTIME_STAMP)
	$(PY) space_app.py $(ARGS)

# Debian's Chromium and ChromeDriver drive the browser test (no test tool downloads a browser);
# nginx plays the load balancer of inference servers at capacity in the remote-backend tests
# (RUNLEVEL=1: the package does not start its own service on port 80); npm installs axe-core.
# Only what is missing is installed: Debian's npm conflicts with a Node.js that brings its own
# (NodeSource's, on our machines), and asking for it beside Chromium failed the whole install.
system-deps:
	@missing=""; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	  test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
	  command -v npm >/dev/null || missing="$$missing npm"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
	      apt-get install -y -qq $$missing; \
	  fi

# llama.cpp's own HF→GGUF converter ships in the llama-cpp-python source release (PyPI): the
# tests use it as an independent writer of GGUF files. Fetched once per machine (TUTOR_CACHE).
reference-converter: $(RUNTIME_STAMP)
	@$(PY) -m bench.llama_server --source-only >/dev/null

lint: $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: system-deps $(DEV_STAMP) reference-converter lint
	npm ci --no-audit --no-fund  # axe-core, for the page's accessibility test
	$(PY) -m pytest
