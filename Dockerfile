# syntax=docker/dockerfile:1
# The one svctrace image: the node agent, the stream workers and the metadata watcher
# (the Helm chart in helm/svctrace runs `svctrace agent|worker|metadata` from it).
#
#   docker build -t svctrace/svctrace:0.1.0 .
#
# Stages: `bpf` compiles the CO-RE BPF object with Debian's clang/bpftool/libbpf-dev (and,
# with the same clang, the core's modules by Cython), `wheels` builds svctrace and its
# dependencies into wheels, the runtime stage installs them on python:3.11-slim with Debian's libbpf1 (loaded through ctypes) and nothing else:
# no compiler, no headers in the image that runs on every node.
#
# Debian bookworm everywhere, so the libbpf1 the agent loads at run time (1.1.2) is the
# one whose headers compiled the object. The object is built for x86-64
# (-D__TARGET_ARCH_x86 in svctrace/agents/ebpf/build.py): build the image for linux/amd64.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- BPF object
FROM ${PYTHON_IMAGE} AS bpf
# Kernel BTF that vmlinux.h is dumped from. CO-RE relocations make the object load on any
# kernel with BTF, whichever kernel the builder runs; point this at a file copied into the
# context (e.g. --build-arg BTF=/src/vmlinux.btf) where the builder has no /sys/kernel/btf.
ARG BTF=/sys/kernel/btf/vmlinux
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm bpftool libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY svctrace svctrace
COPY agents agents
COPY streams streams
COPY schemas schemas
# The project's own build helper (the same flags as the tests' build), with its cache in /build:
# the BPF object, and the agent's native per-event loop (a plain shared library, libc only;
# the runtime stage has no compiler, so it is built here and loaded with --native-lib).
# The helpers run from / : `python -m` puts the working directory first on the path, and /src/svctrace
# (the sources' top package, without the agents/streams/schemas it installs) would shadow the installed one.
RUN pip install --no-cache-dir --no-deps . \
 && cd / \
 && obj="$(XDG_CACHE_HOME=/build python -m svctrace.agents.ebpf.build --force --btf "${BTF}")" \
 && install -D -m 0644 "${obj}" /out/svctrace.bpf.o \
 && lib="$(XDG_CACHE_HOME=/build python -m svctrace.agents.ebpf.build --native --force)" \
 && install -D -m 0644 "${lib}" /out/svctrace-fastpath.so
# The core compiled by Cython (streams/core/native.py), from the very sources the wheel installs
# (its build imports the core's package, so svctrace goes in with its dependencies here).
RUN pip install --no-cache-dir . "Cython>=3.0" "setuptools>=77" \
 && cd / \
 && CC=clang LDSHARED="clang -shared" python -m svctrace.streams.core.build_native --out /out/_compiled \
 && rm -rf /out/_compiled/.build

# --------------------------------------------------------------------------- wheels
FROM ${PYTHON_IMAGE} AS wheels
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY svctrace svctrace
COPY agents agents
COPY streams streams
COPY schemas schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends libbpf1 \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels svctrace \
 && python -c "import ctypes, svctrace.cli, svctrace.agents.ebpf.libbpf; ctypes.CDLL('libbpf.so.1')"
# Where the chart's agent args point (--bpf-object, --native-lib).
COPY --from=bpf /out/svctrace.bpf.o /usr/lib/svctrace/svctrace.bpf.o
COPY --from=bpf /out/svctrace-fastpath.so /usr/lib/svctrace/svctrace-fastpath.so
# Beside the core's modules (the site-packages of PYTHON_IMAGE's Python 3.11); the check fails the build
# if they are not the ones the installed sources would run.
COPY --from=bpf /out/_compiled /usr/local/lib/python3.11/site-packages/svctrace/streams/core/_compiled
RUN python -c "import svctrace.streams.core as c; assert c.NATIVE == 'compiled', c.NATIVE"
# Numeric uid so the kubelet can verify runAsNonRoot. The agent alone runs as uid 0 with
# only the capabilities the chart grants (see helm/svctrace/values.yaml).
RUN groupadd --system --gid 10001 svctrace \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/svctrace --create-home \
      --shell /usr/sbin/nologin svctrace
USER 10001:10001
WORKDIR /var/lib/svctrace
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
EXPOSE 9090
ENTRYPOINT ["svctrace"]
CMD ["--help"]
