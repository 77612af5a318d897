# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv if missing and
# install the pinned project into it (constraints.txt locks every transitive package; torch 2.14.1 +
# torchvision 0.29.1 come from this machine's disk through pip).

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean help

help:
	@echo "make demo   - generate sample data, ingest it on a local Ray cluster, print the catalog"
	@echo "make test   - run the test suite (real Ray, real S3 server on 127.0.0.1)"
	@echo "make bench  - storage benchmarks (benchmarks/ingest.py)"

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (pretextlab needs Python 3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install --quiet --upgrade "pip>=24" wheel
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pretextlab demo --workdir demo-data

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/ingest.py

clean:
	rm -rf demo-data .bench .pytest_cache
