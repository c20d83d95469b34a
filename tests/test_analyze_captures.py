"""`svctrace analyze` on every public capture: no errors; network captures list their
connections (and any chains), captures without network activity say so."""
from __future__ import annotations

import orjson
import pytest

from svctrace.agents.scap import open_capture
from svctrace.analyze.connections import flow_of
from svctrace.cli import main
from svctrace.schemas.validation import validate
from tests.conftest import capture_files

FILES = capture_files()


def analyze(capsys, *args) -> tuple[int, str, str]:
    code = main(["analyze", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def peers(path) -> set[tuple]:
    """(pid, client IP, server) of every TCP/UDP event with a known peer, straight from the reader."""
    found = set()
    for e in open_capture(path):
        got = flow_of(e)
        if got is not None:
            found.add((e.pid, got[1].ip, str(got[2])))
    return found


def test_the_public_captures_are_there(captures):
    assert len(list(captures.glob("*.scap"))) >= 30


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_analyze_every_capture(captures, capsys, path):
    code, out, err = analyze(capsys, captures / path.name, "--connections-limit", "100000")
    assert code in (0, 1), err
    assert err == ""
    assert "SUMMARY" in out
    flows = peers(captures / path.name)
    if flows:
        assert "CONNECTIONS SEEN (" in out or "REQUEST CHAINS" in out, out
        if "CONNECTIONS SEEN (" in out:  # every process's flow is listed (repeats merged per client IP)
            listed = out.split("CONNECTIONS SEEN (")[1].split("SUMMARY")[0]
            for pid, client_ip, server in flows:
                host = f"[{client_ip}]" if ":" in client_ip else client_ip
                assert any(f"({pid})" in line and host in line and f"→ {server}" in line
                           for line in listed.splitlines()), (pid, client_ip, server)
    else:
        assert "no network activity" in out or "no connection with a known peer" in out, out


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_json_on_every_capture_is_schema_valid(captures, capsys, path):
    code, out, err = analyze(capsys, captures / path.name, "--json")
    assert code in (0, 1), err
    for line in out.splitlines():
        record = orjson.loads(line)
        validate(record["schema"].split(".", 1)[1], record)


def test_known_flows_are_named(captures, capsys):
    _, out, _ = analyze(capsys, captures / "libs__curl_google.scap", "--connections")
    assert "curl (17497)  udp  [2600:1f18:262c:6542:9aa6:df7a:9a47:d29e]:40251 → [2001:4860:4860::8888]:53" in out
    assert "→ [2607:f8b0:4004:802::2004]:80  client  out 78 B  in 11.2 KiB" in out
    _, out, _ = analyze(capsys, captures / "sfc__client-server_tcp-client-server.scap")
    assert "server (13823)  tcp  127.0.0.1:40556 → 127.0.0.1:8080  server" in out
    assert "client (13824)  tcp  127.0.0.1:40556 → 127.0.0.1:8080  client" in out


def test_capture_without_network_says_so(captures, capsys):
    code, out, _ = analyze(capsys, captures / "falco__syscall.scap")
    assert code == 0
    assert "no network activity in this capture" in out
