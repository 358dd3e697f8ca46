# Two commands for a fresh Debian/Ubuntu machine with Python 3.11+:
#   make serve   create .venv, install netpost, run every service with embedded defaults
#   make test    install what the tests need (Debian packages too, when root), run the suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint clean

serve: $(VENV)/.installed
	$(BIN)/netpost serve

test: $(VENV)/.installed-test
	scripts/install-test-deps.sh
	$(BIN)/ruff check src tests bench fuzz
	$(BIN)/mypy
	@# Two workers, a test file each at a time (--dist loadfile: a module's server fixture
	@# starts once).  A short --basetemp of its own: tests put gpg-agent sockets under
	@# tmp_path, and a Unix socket's path has at most 107 bytes (xdist adds popen-gwN/).
	@# Removed on success, kept on failure for a look.
	tmp=$$(mktemp -d -t netpost-test.XXXXXX) && \
	  { $(BIN)/pytest -q -n 2 --dist loadfile --basetemp=$$tmp && rm -rf $$tmp || \
	    { echo "the tests' files are kept in $$tmp"; exit 1; }; }

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench fuzz
	$(BIN)/mypy

$(VENV)/.created:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "netpost needs Python 3.11 or newer ($(PYTHON) is older); set PYTHON=python3.11"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || \
	  { echo "cannot create a virtual environment: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	touch $@

$(VENV)/.installed: $(VENV)/.created pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
