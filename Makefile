# Quick start: `make demo` runs the end-to-end demo, `make test` runs the tests.
# Both create .venv on first use and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

WEB := edge_runtime/web
WEB_STAMP := $(WEB)/node_modules/.installed

.PHONY: demo test lint docs install protos conformance bench clean web

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The tests also need Ray Serve (tests/cloud_runtime/test_ray_serve.py): ~335 MB and ~35 s more to
# install, ~35 s to run, and nothing `make demo` or a device needs, so outside dev.
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,ray,web]'
	touch $(TEST_STAMP)

# The TypeScript edge SDK and its demo page (edge_runtime/web), and headless Chromium for the
# browser test. apt only as root and only for what is missing; npm's --ignore-scripts skips
# onnxruntime-node's postinstall, which downloads CUDA libraries (its CPU build is in the package).
$(WEB_STAMP): $(WEB)/package.json $(WEB)/package-lock.json
	command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; } \
		|| echo "npm is not installed: the SDK's tests will skip"
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| echo "chromium is not installed: the browser test will skip"
	if command -v npm >/dev/null; then cd $(WEB) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && touch node_modules/.installed; fi

web: $(WEB_STAMP)
	if [ -f $(WEB_STAMP) ]; then cd $(WEB) && npm run build --silent; fi

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/splitinfer demo

# Style (ruff, configured in pyproject.toml) and the layering contracts (import-linter) first:
# seconds, where the tests take minutes.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The docs site (mkdocs.yml): a broken link or heading anchor fails the build (not --quiet:
# mkdocs 1.6 stops counting warnings then, and passes).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: $(TEST_STAMP) web lint docs
	$(BIN)/python -m pytest -q

protos: $(STAMP)
	$(BIN)/python -m protos.generate

# The contract's test vectors for clients in other languages (docs/contract.md, Conformance).
conformance: $(STAMP)
	$(BIN)/python conformance/generate.py

bench: $(STAMP)
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
