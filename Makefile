# The two commands of the README:
#   make run    the local stack: pymap (in-memory) with pymap-deliver in front
#   make run-cluster   the same in front of two pymap members sharing a private Redis
#   make test   everything CI checks
PYTHON ?= python3
VENV := .venv
PYMAP_VENV := .venv-pymap
PYMAP_SPEC := pymap[admin,macaroon,sieve,redis,swim]==0.36.7
# pymap and pymap-deliver in ONE environment, on pymap's pinned protobuf 4.25
# (the same extras as the server's own environment, for the cluster tests).
SHARED_VENV := .venv-shared
SHARED_SPEC := $(PYMAP_SPEC)
# What the shared environment runs: everything but what is not about the
# environment (the packaging tests build their own; postfix's and sendmail's
# are slow and run in .venv; their mailers run from an install of their own).
SHARED_PYTEST_ARGS ?= -m 'not packaging and not postfix and not sendmail'
# protoc 24: generated code that runs on protobuf 4.25 (pymap's pin) to 7.x.
PROTOC_VENV := .venv-protoc
PROTOC_SPEC := grpcio-tools==1.59.5

.PHONY: sendmail-root run run-cluster test venv pymap-venv protoc-venv shared-venv lint typecheck check-generated generate pytest test-shared dist bench clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

# The real pymap server lives in an environment of its own: its admin extra
# pins an old protobuf that clashes with ours.
pymap-venv: $(PYMAP_VENV)/.installed
$(PYMAP_VENV)/.installed:
	$(PYTHON) -m venv $(PYMAP_VENV)
	$(PYMAP_VENV)/bin/pip install --quiet '$(PYMAP_SPEC)'
	touch $@

protoc-venv: $(PROTOC_VENV)/.installed
$(PROTOC_VENV)/.installed:
	$(PYTHON) -m venv $(PROTOC_VENV)
	$(PROTOC_VENV)/bin/pip install --quiet '$(PROTOC_SPEC)'
	touch $@

shared-venv: $(SHARED_VENV)/.installed
$(SHARED_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SHARED_VENV)
	$(SHARED_VENV)/bin/pip install --quiet --upgrade pip
	$(SHARED_VENV)/bin/pip install --quiet '$(SHARED_SPEC)' -e '.[test]'
	$(SHARED_VENV)/bin/pip check
	@$(SHARED_VENV)/bin/pip freeze | grep -E '^protobuf==4\.25\.' || { echo "pymap's protobuf pin moved"; exit 1; }
	touch $@

generate: venv protoc-venv
	tools/gen_proto.sh

# CI fails if the committed generated code differs from a fresh generation.
check-generated: venv protoc-venv
	@tmp=$$(mktemp -d) && tools/gen_proto.sh "$$tmp" >/dev/null && \
	  for f in admin_pb2.py admin_pb2.pyi admin_grpc.py; do \
	    diff -u pymap_admin/grpc/$$f "$$tmp/pymap_admin/grpc/$$f" || { echo "generated $$f is stale: run make generate"; exit 1; }; \
	  done; rm -rf "$$tmp"; echo "generated code is up to date"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy pymap_admin pymap_deliver devstack tests benchmarks

pytest: venv pymap-venv
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)

# Debian's sendmail and m4 unpacked (not installed: sendmail conflicts with
# postfix) into .cache/sendmail-root, for tests/test_sendmail_e2e.py.
sendmail-root:
	tools/fetch_sendmail.sh

# The suite again, in one environment with pymap (its server from there too).
test-shared: shared-venv
	PYMAP_SERVER_VENV=$(CURDIR)/$(SHARED_VENV) $(SHARED_VENV)/bin/pytest -ra $(SHARED_PYTEST_ARGS)

test: check-generated lint pytest test-shared

# The sdist and wheel (with the man pages and completions) into dist/.
dist: venv
	$(VENV)/bin/python -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

run: venv pymap-venv
	$(VENV)/bin/python -m devstack.stack

run-cluster: venv pymap-venv
	$(VENV)/bin/python -m devstack.stack --cluster 2

bench: venv pymap-venv
	$(VENV)/bin/python -m benchmarks.append_cli
	$(VENV)/bin/python -m benchmarks.lmtp_load
	$(VENV)/bin/python -m benchmarks.cluster

clean:
	rm -rf $(VENV) $(PYMAP_VENV) $(PROTOC_VENV) $(SHARED_VENV) dist .mypy_cache .ruff_cache .pytest_cache .cache
