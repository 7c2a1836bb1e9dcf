# Two entry points: `make app` (install the runtime, start the app) and `make test`.
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: app test system-deps

app:
	$(PYTHON) -m pip install -r requirements.txt
	$(PYTHON) space_app.py

# Debian's Chromium and ChromeDriver drive the browser test (no test tool downloads a browser).
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	   $(SUDO) apt-get install -y -qq chromium chromium-driver)

test: system-deps
	$(PYTHON) -m pip install -r requirements-dev.txt
	$(PYTHON) -m pytest
