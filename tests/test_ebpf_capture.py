"""`svctrace capture -w FILE.scap` on the real kernel; Debian's sysdig and our reader read the file."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.test_ebpf_kafka import read_line_matching
from tests.test_ebpf_live import free_port, wait_listening

pytestmark = [pytest.mark.root, pytest.mark.sysdig]


def test_capture_writes_a_scap_file_sysdig_reads(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("needs root")
    sysdig = shutil.which("sysdig")
    assert sysdig, "sysdig missing: .ci/install-system-deps installs it"
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "a.txt").write_bytes(b"captured to scap\n")
    out = tmp_path / "live.scap"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(tmp_path / "www")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    cap = subprocess.Popen([sys.executable, "-m", "svctrace", "capture", "-w", str(out)], stderr=subprocess.PIPE,
                           text=True)
    try:
        wait_listening(port, server)
        read_line_matching(cap.stderr, r"capturing")
        curl = subprocess.run(["curl", "-s", "-H", "Authorization: Basic c2VjcmV0", f"http://127.0.0.1:{port}/a.txt"],
                              capture_output=True, timeout=30)
        assert curl.stdout == b"captured to scap\n"
    finally:
        cap.send_signal(signal.SIGTERM)
        rc = cap.wait(60)
        tail = cap.stderr.read()
        server.terminate()
        server.wait(10)
    assert rc == 0, tail
    assert "events written" in tail

    p = subprocess.run([sysdig, "-r", str(out), "-p", "%proc.name|%evt.type|%evt.rawres|%fd.name"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = [line.split("|") for line in p.stdout.splitlines()]
    conn = [r for r in rows if r[0] == "curl" and r[1] == "connect" and r[3].endswith(f"->127.0.0.1:{port}")]
    assert conn and conn[0][2] in ("0", "-115")
    client_port = conn[0][3].split("->")[0].rsplit(":", 1)[1]
    assert any(r[1] in ("accept", "accept4") and r[3] == f"127.0.0.1:{client_port}->127.0.0.1:{port}" for r in rows)

    from svctrace.agents.scap import open_capture

    events = list(open_capture(str(out)))
    req = next(e for e in events if e.comm == "curl" and e.kind == "send" and e.remote_port == port)
    assert req.data.startswith(b"GET /a.txt HTTP/1.1") and b"c2VjcmV0" not in req.data  # redacted by default
    resp = next(e for e in events if e.kind == "send" and e.local_port == port and e.data and b"captured" in e.data)
    assert resp.remote_port == int(client_port)
