# The two commands a newcomer needs:  `make demo`  and  `make test`.
# The interpreter the venv is made from: the distribution's python3 where it can make a venv and build
# extensions (a Debian/Ubuntu python3 is built with profile-guided and link-time optimization, like the image's
# python:3.11-slim; a pyenv or source build usually is not, and runs the worker's Python code ~15% slower:
# docs/performance.md, "The interpreter"); else whatever python3 is first on PATH. Evaluated when the venv is
# made, after system-deps. `make PY=...` chooses another.
PY      ?= $(shell /usr/bin/python3 -c 'import ensurepip, os, sysconfig; assert os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null && echo /usr/bin/python3 || echo python3)
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The core compiled by Cython (streams/core/native.py); rebuilt when one of its modules changes.
NATIVE  := streams/core/_compiled/SOURCES
NATIVE_SOURCES := $(addprefix streams/core/,$(addsuffix .py,alerts arenas dns enrich enriched graph http keys memo rules runner stitch timeorder)) \
                  $(wildcard streams/core/*.pxd) $(wildcard streams/core/*.c) streams/core/records.py schemas/models.py

.PHONY: demo test setup system-deps bench clean

# The main job on the embedded default: no cluster, no broker.
# analyze exits 1 when it finds warning or critical alerts; the bundled example has broken paths on purpose.
demo: $(STAMP) $(NATIVE)
	$(BIN)/svctrace analyze examples/seed/capture.scap --cluster examples/seed/cluster.json || [ $$? -eq 1 ]

# The whole test suite, exactly as CI runs it.
test: system-deps $(STAMP) $(NATIVE)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

setup: $(STAMP) $(NATIVE)

$(STAMP): pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Without a C compiler the core runs as Python (slower, the same outputs); the tests say so
# (tests/test_core_native.py), the worker and analyze log it.
$(NATIVE): $(STAMP) $(NATIVE_SOURCES)
	$(BIN)/python -m svctrace.streams.core.build_native || echo "svctrace: compiling the core failed (see above): it runs as Python"

# Debian packages the tests use (python3-venv and python3-dev for the venv and the core's build, sysdig as the decoder's oracle, clang/bpftool/libbpf
# for the eBPF agent, iptables/iproute2 for the lab networks). Idempotent.
system-deps:
	bash .ci/install-system-deps

bench: $(STAMP) $(NATIVE) system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .cache build *.egg-info streams/core/_compiled
