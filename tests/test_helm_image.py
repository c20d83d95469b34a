"""The Dockerfile and the chart agree. No container engine runs here, so the image itself is
not built in tests; these checks keep the two files from drifting apart."""
from __future__ import annotations

import re

import yaml

from tests.harness.helm import CHART, REPO, helm  # noqa: F401

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    """Instructions grouped per build stage (each list starts with its FROM)."""
    out: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            out.append([])
        if out:
            out[-1].append((word, rest))
    return out


def runs(stage: list[tuple[str, str]]) -> str:
    return " ".join(rest for word, rest in stage if word == "RUN")


def test_multi_stage_build_compiles_the_bpf_object_with_debian_tools():
    bpf, wheels, runtime = stages()
    assert bpf[0][1].endswith(" AS bpf") and wheels[0][1].endswith(" AS wheels")
    for package in ("clang", "bpftool", "libbpf-dev"):
        assert re.search(rf"\b{package}\b", runs(bpf)), package
    assert "svctrace.agents.ebpf.build" in runs(bpf), "the project's own build helper compiles the object"
    assert (REPO / "agents" / "bpf" / "svctrace.bpf.c").is_file()


def test_runtime_stage_has_libbpf1_and_no_toolchain():
    runtime = stages()[-1]
    assert "libbpf1" in runs(runtime)
    assert not re.search(r"\b(clang|llvm|bpftool|libbpf-dev|build-essential|gcc)\b", runs(runtime))
    assert ("ENTRYPOINT", '["svctrace"]') in runtime


def test_copied_sources_exist():
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert (REPO / src).exists(), src


def test_image_and_chart_agree(helm):
    ins = instructions()
    docs = helm.render({})
    agent = next(d for d in docs if d["kind"] == "DaemonSet")
    args = agent["spec"]["template"]["spec"]["containers"][0]["args"]
    bpf_object = next(a.split("=", 1)[1] for a in args if a.startswith("--bpf-object="))
    assert ("COPY", f"--from=bpf /out/svctrace.bpf.o {bpf_object}") in ins
    native_lib = next(a.split("=", 1)[1] for a in args if a.startswith("--native-lib="))
    assert ("COPY", f"--from=bpf /out/svctrace-fastpath.so {native_lib}") in ins
    assert "svctrace.agents.ebpf.build --native" in runs(stages()[0]), "the native loop is built in the bpf stage"
    user = next(rest for word, rest in ins if word == "USER")
    uid, gid = (int(x) for x in user.split(":"))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for component in ("worker", "metadata"):
        psc = values[component]["podSecurityContext"]
        assert (psc["runAsUser"], psc["runAsGroup"]) == (uid, gid), component
    assert values["image"]["repository"] and not values["image"]["digest"]
