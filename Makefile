# The two commands a newcomer needs:  `make demo`  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test setup system-deps bench clean

# The main job on the embedded default: no cluster, no broker.
# analyze exits 1 when it finds warning or critical alerts; the bundled example has broken paths on purpose.
demo: $(STAMP)
	$(BIN)/svctrace analyze examples/seed/capture.scap --cluster examples/seed/cluster.json || [ $$? -eq 1 ]

# The whole test suite, exactly as CI runs it.
test: system-deps $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests use (python3-venv for the venv, sysdig as the decoder's oracle, clang/bpftool/libbpf
# for the eBPF agent, iptables/iproute2 for the lab networks). Idempotent.
system-deps:
	bash .ci/install-system-deps

bench: $(STAMP) system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .cache build *.egg-info
