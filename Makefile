# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv if missing and
# install the pinned project into it (constraints.txt locks every transitive package; torch 2.14.1 +
# torchvision 0.29.1 come from this machine's disk through pip).

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install bench clean help image

help:
	@echo "make demo   - sample data + ingest, then a study (DINO, I-JEPA, MAE + random init) on the controlled benchmark"
	@echo "make test   - run the test suite (real Ray, real S3 server on 127.0.0.1)"
	@echo "make lint   - ruff (lint + format check) and mypy (strict for core, models, objectives, views, modalities; normal elsewhere)"
	@echo "make bench  - every benchmark in quick mode -> .bench/summary.json (FULL=1: the long versions; docs/performance.md)"

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

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(if $(FULL),--full,)

clean:
	rm -rf demo-data bench-data .bench .pytest_cache

# Container images for KubeRay (docker/Dockerfile.<variant>), tagged with the pinned Ray version:
#   make image                                    # pretextlab:<ray>        (CPU)
#   make image VARIANT=cuda                       # pretextlab-cuda:<ray>   (CUDA)
#   make image VARIANT="cpu cuda" IMAGE=registry.example.com/team/pretextlab PUSH=1
image:
	@command -v docker >/dev/null 2>&1 || { echo "error: make image needs Docker (docker not found on PATH)" >&2; exit 2; }
	@docker info >/dev/null 2>&1 || { echo "error: make image needs a running Docker engine (docker info failed: start Docker, or set DOCKER_HOST)" >&2; exit 2; }
	@set -e; \
	ray=$$(sed -n 's/.*"ray\[[^]]*\]==\([0-9][0-9.]*\)".*/\1/p' pyproject.toml); \
	test -n "$$ray" || { echo "error: no ray==X.Y.Z pin found in pyproject.toml" >&2; exit 2; }; \
	commit=$$(git rev-parse HEAD 2>/dev/null || echo unknown); \
	for variant in $(or $(VARIANT),cpu); do \
	  case $$variant in cpu) name="$(or $(IMAGE),pretextlab)";; cuda) name="$(or $(IMAGE),pretextlab)-cuda";; \
	    *) echo "error: VARIANT must be cpu and/or cuda (got $$variant)" >&2; exit 2;; esac; \
	  echo "building $$name:$$ray from docker/Dockerfile.$$variant"; \
	  docker build -f docker/Dockerfile.$$variant --build-arg RAY_VERSION=$$ray --build-arg GIT_COMMIT=$$commit \
	    -t $$name:$$ray -t $$name:$$ray-$${commit%"$${commit#???????}"} . ; \
	  if [ -n "$(PUSH)" ]; then docker push $$name:$$ray; docker push $$name:$$ray-$${commit%"$${commit#???????}"}; fi; \
	done
