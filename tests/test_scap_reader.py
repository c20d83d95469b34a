"""Reader features beyond the oracle comparison: block types, metadata, embedded
container and Kubernetes state, enter/exit merging, the event table."""
from __future__ import annotations

import collections
import struct
import time

import orjson
import pytest

from svctrace.agents.scap import ScapWriter, open_capture
from svctrace.agents.scap import blocks as B
from svctrace.agents.scap.event_table import BY_ENUM, EVENTS, latest
from svctrace.agents.scap.normalize import CATEGORY
from tests.conftest import capture_files
from tests.test_scap_writer import synthetic_events


def _block_types(path) -> collections.Counter:
    f, name = B.open_raw(path)
    with f:
        return collections.Counter(B.block_name(t) for _o, t, *_ in B.BlockStream(f, name, B.Stats()))


def test_every_public_capture_parses_completely(captures):
    seen = collections.Counter()
    for path in capture_files():
        r = open_capture(path)
        list(r)
        assert r.stats.errors == [] and r.stats.skipped_bytes == 0, path
        assert r.stats.event_blocks == r.stats.events + r.stats.unknown_event_types
        assert r.node and r.machine["num_cpus"] >= 1
        seen.update(_block_types(path))
    # every block family of the format is exercised by the public captures
    for name in ("SHB", "MI", "IL", "IL_V2", "UL", "UL_V2", "PL_V5", "PL_V6", "PL_V7", "PL_V8", "PL_V9",
                 "FDL", "FDL_V2", "EV", "EV_V2", "EV_V2_LARGE"):
        assert seen[name] > 0, name


def test_shb_options_are_skipped(captures):
    opts = _block_types(captures / "libs__curl_google_comments.scap")
    plain = _block_types(captures / "libs__curl_google.scap")
    assert opts == plain
    raw = (captures / "libs__curl_google_comments.scap").read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[3] & 0x08  # gzip FNAME header


def test_interfaces_users_and_machine(captures):
    r = open_capture(captures / "libs__sample.scap")
    list(r)
    assert r.node == "ubuntu2204.localdomain"
    assert {"lo", "127.0.0.1"} <= {v for i in r.interfaces for v in (i["name"], i["addr"])}
    assert any(u["type"] == "user" and u["name"] == "root" and u["uid"] == 0 for u in r.users)


def test_container_state_and_container_ids(captures):
    r = open_capture(captures / "sfc__nginx_nginx.scap")
    events = list(r)
    assert r.containers and all(isinstance(c, dict) and c["id"] for c in r.containers.values())
    ids = {e.container_id for e in events if e.container_id}
    assert ids and ids <= set(r.containers), (ids, list(r.containers))
    assert all(len(i) == 12 for i in ids)


def test_large_event_block_container_json(captures):
    r = open_capture(captures / "sfc__rename_rename.scap")
    raw = [e for e in r.raw_events() if EVENTS[e.code].enum == "PPME_CONTAINER_JSON_2_E"]
    assert raw and orjson.loads(raw[0].params["json"])["container"]["id"] in r.containers


def test_k8s_state_events_are_exposed(tmp_path):
    state = {"type": "ADDED", "api": "v1", "kind": "Service", "items": [{"metadata": {"name": "web"}}]}
    path = tmp_path / "k8s.scap"
    with ScapWriter(path, hostname="master") as w:
        w.write_raw(1_500_000_000_000_000_000, -1, BY_ENUM["PPME_K8S_E"].code, {"json": orjson.dumps(state).decode()})
        for e in synthetic_events(node="master"):
            w.write_event(e)
    r = open_capture(path)
    assert len(list(r)) == len(synthetic_events())
    assert r.k8s_states == [(1_500_000_000_000_000_000, state)]


def test_event_flags_blocks_are_read_like_event_blocks(tmp_path):
    """No public capture uses EVF blocks: turn our EV_V2 blocks into EVF_V2 (u32 flags after cpuid)."""
    path = tmp_path / "ev.scap"
    with ScapWriter(path, hostname="h") as w:
        for e in synthetic_events():
            w.write_event(e)
    data, out, off = path.read_bytes(), [], 0
    while off < len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        body = data[off + 8:off + blen - 4]
        if btype == 0x216:
            evt_len = struct.unpack_from("<I", body, 2 + 16)[0]
            new = body[:2] + struct.pack("<I", 0) + body[2:2 + evt_len]
            total = 12 + len(new) + (-len(new)) % 4
            out.append(struct.pack("<II", 0x217, total) + new + bytes((-len(new)) % 4) + struct.pack("<I", total))
        else:
            out.append(data[off:off + blen])
        off += blen
    (tmp_path / "evf.scap").write_bytes(b"".join(out))
    assert _block_types(tmp_path / "evf.scap")["EVF_V2"] > 0
    assert list(open_capture(tmp_path / "evf.scap")) == list(open_capture(path))


def test_old_exit_events_get_enter_params(captures):
    """2018 capture: READ_X has only res+data, the fd is in READ_E; the merged event has it."""
    path = captures / "libs__curl_google.scap"
    raw = list(open_capture(path).raw_events())
    old_exit = next(r for r in raw if EVENTS[r.code].enum == "PPME_SOCKET_SENDTO_X")
    assert "fd" not in old_exit.params and old_exit.nparams < len(EVENTS[old_exit.code].params)
    merged = next(e for e in open_capture(path) if e.n == old_exit.n)
    assert merged.fd == 4 and merged.remote_port == 53 and merged.data.endswith(b"\x00\x1c\x00\x01")


def test_event_table_is_the_single_source():
    assert len(EVENTS) == 454 and all(e.code == i for i, e in enumerate(EVENTS))
    assert latest("connect").params[0] == ("res", "ERRNO")
    assert latest("accept4").enum == "PPME_SOCKET_ACCEPT4_6_X"
    assert EVENTS[BY_ENUM["PPME_SOCKET_ACCEPT4_5_X"].code].syscall == "accept4"
    net = {EVENTS[c].syscall for c, cat in enumerate(CATEGORY) if cat == "net"}
    assert {"read", "write", "sendto", "recvmsg", "connect", "accept4", "close", "shutdown", "pwritev"} <= net
    assert all(not EVENTS[c].is_enter for c, cat in enumerate(CATEGORY) if cat == "net")


@pytest.mark.parametrize("name,kinds", [
    ("sfc__client-server_tcp-client-server.scap", {"socket", "bind", "listen", "accept", "connect", "send", "recv"}),
    ("libs__single_ipv6_conn.scap", {"socket", "bind", "listen", "accept", "connect", "recv"}),
])
def test_roles(captures, name, kinds):
    events = list(open_capture(captures / name))
    assert kinds <= {e.kind for e in events}
    for e in events:
        if e.kind in ("accept", "listen") or (e.kind == "bind" and e.local_port):
            assert e.role == "server", e
        if e.kind == "connect" and e.family != "unix":
            assert e.role == "client", e
    accepted = next(e for e in events if e.kind == "accept")
    connected = next(e for e in events if e.kind == "connect" and e.res in (0, -115) and e.remote_port)
    assert (accepted.remote_ip, accepted.remote_port) == (connected.local_ip, connected.local_port)
    assert (accepted.local_port) == connected.remote_port


def test_events_match_the_syscall_batch_schema(captures):
    from svctrace.schemas.models import SyscallBatch, encode_batch
    from svctrace.schemas.validation import errors

    for path in capture_files():
        reader = open_capture(path)
        events = list(reader)
        if not events:
            continue
        doc = orjson.loads(encode_batch(SyscallBatch(node=reader.node, source="scap", seq=0, events=events)))
        problems = errors("syscall-batch", doc)
        assert not problems, (path.name, problems[:3])


def test_cli_json_and_net_filter(captures):
    import subprocess
    import sys

    path = captures / "libs__curl_google.scap"
    cmd = [sys.executable, "-m", "svctrace", "read", str(path)]
    full = subprocess.run(cmd + ["--json"], capture_output=True, timeout=120, check=True).stdout.splitlines()
    net = subprocess.run(cmd + ["--json", "--filter", "net"], capture_output=True, timeout=120,
                         check=True).stdout.splitlines()
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
    docs = [orjson.loads(line) for line in full]
    assert len(docs) == len(text) == 20 and {d["family"] for d in docs} == {"ipv6", "unix"}
    assert [orjson.loads(line)["n"] for line in net] == [d["n"] for d in docs if d["family"] == "ipv6"]
    assert any("GET / HTTP/1.1" in line and "sendto" in line for line in text)
    # as sysdig -r prints an event's time: the time of day (UTC), to the ns; --json keeps the epoch ns
    first = docs[0]["ts"]
    assert text[0].split()[1] == time.strftime("%H:%M:%S", time.gmtime(first // 10**9)) + f".{first % 10**9:09d}"
    raw = subprocess.run(cmd + ["--raw", "--json"], capture_output=True, timeout=120, check=True).stdout
    assert raw.count(b"\n") == 1536


def _s(text: str) -> bytes:
    return struct.pack("<H", len(text)) + text.encode()


@pytest.mark.parametrize("version", range(1, 10))
def test_process_list_versions(version):
    """PL_V1..V9 field presence (scap-format.md §8); the public captures only have V5-V9."""
    e = struct.pack("<qqq", 100, 99, 1)
    e += struct.pack("<q", 7) if version >= 6 else b""  # sid
    e += struct.pack("<q", 8) if version >= 8 else b""  # vpgid
    e += _s("nginx") + _s("nginx:")
    e += _s("/usr/sbin/nginx") if version >= 7 else b""
    e += _s("-g\0daemon off;") + _s("/") + struct.pack("<QIII", 1024, 0, 0, 0)
    e += struct.pack("<IIIQQ", 1, 2, 3, 4, 5) if version >= 2 else b""
    e += _s("PATH=/bin") if version >= 3 else b""
    cg = "cpuset=/docker/" + "ab" * 32
    e += struct.pack("<qq", 1, 1) + _s(cg) if version >= 4 else b""
    e += _s("/") if version >= 5 else b""
    if version == 9:
        e += struct.pack("<QI", 0, 0)  # optional tail (pidns_init_start_ts, tty), skipped by sub_len
        e = struct.pack("<I", len(e) + 4) + e
    body = e + e  # two entries
    out = B.parse_proclist(body, version)
    assert [(p["tid"], p["pid"], p["comm"]) for p in out] == [(100, 99, "nginx")] * 2
    assert out[0]["exepath"] == ("/usr/sbin/nginx" if version >= 7 else "")
    assert B.container_id_from_cgroups(out[0]["cgroups"]) == ("abababababab" if version >= 4 else None)


def test_reader_events_are_plain_syscall_events():
    """models.make_event (the reader's event builder, given the values in field order) makes the
    very events the keyword constructor makes: same class, equal, equal hash, frozen, same
    serialized form."""
    import dataclasses

    from svctrace.schemas.models import SyscallEvent, dumps, make_event

    values = (7, "node-a", 3, 10, 11, "curl", "send", "sendto", 4, 5, None, "tcp", "ipv4", "client",
              "10.0.0.1", 40000, "10.96.0.10", 80, "10.96.0.10", 80, 5, b"GET /", False, "/usr/bin/curl", "abc")
    names = [f.name for f in dataclasses.fields(SyscallEvent)]
    built, made = make_event(*values), SyscallEvent(**dict(zip(names, values)))
    assert built.__class__ is SyscallEvent and built == made and hash(built) == hash(made)
    assert dumps(built) == dumps(made) and built.to_dict() == made.to_dict()
    with pytest.raises(AttributeError):  # frozen
        built.ts = 8
    short = make_event(1, "n", 2, 3, 4, "c", "close", "close", 5, 0)
    assert short == SyscallEvent(**dict(zip(names, (1, "n", 2, 3, 4, "c", "close", "close", 5, 0))))
    assert short.netns is None
