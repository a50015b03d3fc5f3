# The README's commands. Each creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test classify test test-fast lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-worker: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[worker,learn,alike]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-worker

install: $(VENV)/.installed-worker
install-test: $(VENV)/.installed-test
	@# tests/test_compose.py builds the image and runs docker-compose.yml on Debian's podman (with runc; its
	@# bases built by debootstrap, deploy/build-bases.sh): as root, install them when missing.
	@for tool in podman podman-compose runc debootstrap; do command -v $$tool >/dev/null || echo $$tool; done | \
		{ read -r first || exit 0; [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq podman podman-compose runc debootstrap >/dev/null; } || \
		echo "podman, podman-compose, runc or debootstrap not installed: tests/test_compose.py will be skipped"
	@# tests/test_report.py opens `imgq report` in Debian's chromium (headless); as root, install it when missing.
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the browser test will be skipped"
	@# tests/test_tag.py reads the sidecars imgq writes back with exiftool (Debian's libimage-exiftool-perl).
	@command -v exiftool >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq libimage-exiftool-perl >/dev/null; } || echo "exiftool not installed: the sidecar round trip tests will be skipped"
	@# tests/test_formats.py makes HEIC twins of JPEGs with libheif's heif-enc (Debian's libheif-examples).
	@command -v heif-enc >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq libheif-examples >/dev/null; } || echo "heif-enc not installed: the HEIC tests that need it will be skipped"
	@# tests/test_groups.py checks the vendored groups table against WordNet 3.0 (Debian's wordnet-base).
	@test -f /usr/share/wordnet/data.noun || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends wordnet-base >/dev/null; } || \
		echo "wordnet-base not installed: the groups table's check against WordNet will be skipped"

## make classify DIR=<folder>: classify every image under the folder on this machine
classify: install
	@test -n "$(DIR)" || { echo "Usage: make classify DIR=<folder>"; exit 2; }
	$(BIN)/imgq classify "$(DIR)"

## make test: the whole suite, slow end-to-end tests included
test: install-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

test-fast: install-test
	$(BIN)/pytest -m "not slow"

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
