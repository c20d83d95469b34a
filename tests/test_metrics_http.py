"""--metrics-addr means the same for every long-running command (agent, worker, metadata)."""
from __future__ import annotations

import argparse
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from svctrace import metrics_http


@pytest.mark.parametrize("addr, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    (":9464", ("127.0.0.1", 9464)),  # no host: loopback, never all interfaces by accident
    ("[::1]:9464", ("::1", 9464)),
])
def test_address_forms(addr, expected):
    assert metrics_http.parse_addr(addr) == expected


@pytest.mark.parametrize("bad", ["9464x", "localhost", "host:port"])
def test_a_bad_address_is_refused_at_parse_time_with_the_form_expected(bad):
    parser = argparse.ArgumentParser()
    parser.add_argument("--metrics-addr", type=metrics_http.addr_arg)
    with pytest.raises(argparse.ArgumentTypeError, match="is not HOST:PORT"):
        metrics_http.addr_arg(bad)
    assert parser.parse_args(["--metrics-addr", ""]).metrics_addr == ""  # '' turns it off


def test_serves_the_registry_on_a_free_port():
    registry = CollectorRegistry()
    Counter("svctrace_test_things", "things", registry=registry).inc(3)
    server, host, port = metrics_http.serve(registry, "127.0.0.1:0")
    try:
        assert (host, port != 0) == ("127.0.0.1", True)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "svctrace_test_things_total 3.0" in body
    finally:
        server.shutdown()
        server.server_close()
