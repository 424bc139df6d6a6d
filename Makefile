# The two commands of the README; each installs what it needs (uv, the locked environment,
# Debian's dataset-fashion-mnist, chromium and postgresql) on a fresh machine. `make search WORKERS=4`: four
# worker processes on the study (search/workers/local.py). `docs` and `docs-serve` build and serve
# the documentation site (docs/, mkdocs.yml) from the same locked environment.
UV := python3 -m uv
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
APT_PACKAGES := $(if $(wildcard $(FMNIST)),,dataset-fashion-mnist) $(if $(shell command -v chromium),,chromium) \
	$(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql)

.PHONY: search test setup system benchmarks docs docs-serve

# make test installs the optional runtimes its tests measure on (OpenVINO, ExecuTorch); make search keeps what is there
test: SYNC := --extra runtimes
search: SYNC := --inexact

search: setup system
	$(UV) run --locked python -m search $(if $(WORKERS),study.workers=$(WORKERS)) $(ARGS)

# the layers first (pyproject.toml's import-linter contracts: a few seconds), then the tests
test: setup system
	$(UV) run --locked lint-imports
	$(UV) run --locked python -m pytest -q $(ARGS)

# The site in results/site/ (git-ignored); strict: a broken link, a page missing from the navigation or a
# docstring reference that does not resolve fails the build. NO_MKDOCS_2_WARNING hides the banner Material for
# MkDocs prints on every build: its end of life on 2027-05-05 (critical fixes until then; Zensical, by the same
# team, reads mkdocs.yml). A note for the maintainers, not a fault in the site.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(UV) run --locked mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(UV) run --locked mkdocs serve --strict --dev-addr 127.0.0.1:$(or $(PORT),8000)

setup:
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --locked $(SYNC)

# Debian packages, only when missing and only where apt can install them (root); otherwise say how.
system:
	@if [ -n "$(strip $(APT_PACKAGES))" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing $(strip $(APT_PACKAGES)) (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else \
	    echo "missing Debian packages: $(strip $(APT_PACKAGES)); install them with: sudo apt-get install -y $(strip $(APT_PACKAGES))"; \
	  fi; \
	fi
