# Two entry points: `make app` (install the runtime, start the app) and `make test`.
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

LLAMA_CPP_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' requirements.txt)
REFERENCE_DIR := .cache/reference

.PHONY: app test system-deps reference-converter

# pip runs again only when the requirements change (a stamp records the last install).
RUNTIME_STAMP := .cache/requirements.installed

$(RUNTIME_STAMP): requirements.txt
	$(PYTHON) -m pip install -r requirements.txt
	@mkdir -p $(dir $@) && touch $@

app: $(RUNTIME_STAMP)
	$(PYTHON) space_app.py

# Debian's Chromium and ChromeDriver drive the browser test (no test tool downloads a browser);
# nginx plays the load balancer of inference servers at capacity in the remote-backend tests
# (RUNLEVEL=1: the package does not start its own service on port 80); npm installs axe-core.
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && \
	  test -x /usr/sbin/nginx && command -v npm >/dev/null || \
	  ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
	   apt-get install -y -qq chromium chromium-driver nginx-light npm)

# llama.cpp's own HF→GGUF converter ships in the llama-cpp-python source release (PyPI): the
# tests use it as an independent writer of GGUF files to check the exporter and the app against.
reference-converter:
	@ls $(REFERENCE_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz >/dev/null 2>&1 || \
	  $(PYTHON) -m pip download --quiet --no-deps --no-binary :all: \
	    llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(REFERENCE_DIR)

test: system-deps
	$(PYTHON) -m pip install -r requirements-dev.txt
	$(MAKE) reference-converter
	npm ci --no-audit --no-fund  # axe-core, for the page's accessibility test
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest
