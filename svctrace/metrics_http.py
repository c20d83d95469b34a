"""The Prometheus /metrics endpoint every long-running command serves (agent, worker, metadata).

One place for the address form, so `--metrics-addr HOST:PORT` means the same everywhere:
port 0 takes any free port, an empty host means loopback, `[::1]:9464` works for IPv6.
"""
from __future__ import annotations

import argparse


def parse_addr(addr: str) -> tuple[str, int]:
    """'host:port' -> (host, port); the host defaults to loopback (never all interfaces by accident)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address {addr!r} is not HOST:PORT (e.g. 127.0.0.1:9464, 0.0.0.0:9464)")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(registry, addr: str):
    """Serve the CollectorRegistry `registry` at `addr`; returns (server, host, bound port).
    Stop it with server.shutdown()."""
    from prometheus_client import start_http_server  # here: every command's --help imports this module

    host, port = parse_addr(addr)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, host, server.server_port


def addr_arg(value: str) -> str:
    """argparse type of --metrics-addr: '' (off) or HOST:PORT, refused at parse time with the reason."""
    if value:
        try:
            parse_addr(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return value
