# The two commands of the README:
#   make run    the local stack: pymap (in-memory) with pymap-deliver in front
#   make run-cluster   the same in front of two pymap members sharing a private Redis
#   make test   everything CI checks
PYTHON ?= python3
VENV := .venv
PYMAP_VENV := .venv-pymap
PYMAP_SPEC := pymap[admin,macaroon,sieve,redis,swim]==0.36.7

.PHONY: run run-cluster test venv pymap-venv lint typecheck check-generated generate pytest bench clean

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

generate: venv
	tools/gen_proto.sh

# CI fails if the committed generated code differs from a fresh generation.
check-generated: venv
	@tmp=$$(mktemp -d) && tools/gen_proto.sh "$$tmp" >/dev/null && \
	  for f in admin_pb2.py admin_pb2.pyi admin_grpc.py; do \
	    diff -u pymap_admin/grpc/$$f "$$tmp/pymap_admin/grpc/$$f" || { echo "generated $$f is stale: run make generate"; exit 1; }; \
	  done; rm -rf "$$tmp"; echo "generated code is up to date"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy pymap_admin pymap_deliver devstack tests benchmarks

pytest: venv pymap-venv
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)

test: check-generated lint pytest

run: venv pymap-venv
	$(VENV)/bin/python -m devstack.stack

run-cluster: venv pymap-venv
	$(VENV)/bin/python -m devstack.stack --cluster 2

bench: venv pymap-venv
	$(VENV)/bin/python -m benchmarks.append_cli
	$(VENV)/bin/python -m benchmarks.lmtp_load

clean:
	rm -rf $(VENV) $(PYMAP_VENV) .mypy_cache .ruff_cache .pytest_cache
