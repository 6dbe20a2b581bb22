# swarmnode — two entry points: `make demo` and `make test`. Both set up everything they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup host-deps demo test test-fast bench clean

setup: host-deps $(STAMP)

# Debian packages portage needs on a non-Gentoo host (scanelf from pax-utils, gpg for
# signing, git for repository sync), `ip` (iproute2) for the network-namespace tests, and
# the `portage` user/group it drops privileges to.
host-deps:
	@missing=""; \
	command -v scanelf >/dev/null || missing="$$missing pax-utils"; \
	command -v gpg >/dev/null || missing="$$missing gnupg"; \
	command -v git >/dev/null || missing="$$missing git"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	command -v make >/dev/null || missing="$$missing make"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
	  echo ">>> installing Debian packages:$$missing"; \
	  (apt-get install -y -q $$missing || (apt-get update -q && apt-get install -y -q $$missing)) >/dev/null; \
	fi
	@getent group portage >/dev/null || groupadd -r -g 250 portage 2>/dev/null || groupadd -r portage
	@getent passwd portage >/dev/null || useradd -r -u 250 -g portage -d /var/tmp/portage -s /bin/false portage 2>/dev/null || useradd -r -g portage -d /var/tmp/portage -s /bin/false portage

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

demo: setup
	$(PY) -m swarmnode.demo

test: setup
	$(PY) -m pyflakes swarmnode tests simulation
	$(PY) -m mypy
	$(PY) -m pytest -q -ra --durations=15

test-fast: setup
	$(PY) -m pytest -q -m 'not slow'

clean:
	rm -rf $(VENV) demo-run build bench-out

# Raft/swarm figures on loopback (real processes): commit latency, commands/s, failover,
# dead-worker requeue. Prints a table and writes bench-out/result.json (see simulation/bench/).
bench: setup
	$(PY) -m simulation.bench.cluster_bench --nodes 3,5 --out bench-out
