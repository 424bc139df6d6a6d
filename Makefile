# The two commands of the README; each installs what it needs (uv, the locked environment,
# Debian's dataset-fashion-mnist and chromium) on a fresh machine.
UV := python3 -m uv
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
APT_PACKAGES := $(if $(wildcard $(FMNIST)),,dataset-fashion-mnist) $(if $(shell command -v chromium),,chromium)

.PHONY: search test setup system benchmarks

search: setup system
	$(UV) run --locked python -m search $(ARGS)

test: setup system
	$(UV) run --locked python -m pytest -q $(ARGS)

setup:
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --locked

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
