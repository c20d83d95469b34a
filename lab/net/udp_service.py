"""The lab's UDP Service: a statsd-like server in a pod, and the client that asks it.

    python -m lab.net.udp_service serve BIND_IP PORT      # answers each datagram with "ok"; prints "ready"
    python -m lab.net.udp_service ask NAME PORT [TIMEOUT]  # exit status: 0 answered, 1 refused, 2 no reply

The client resolves NAME with glibc's getaddrinfo (the pod's resolv.conf: search list, ndots), connects a
UDP socket to the first address (a connected socket is told of an ICMP error: ECONNREFUSED for a port
unreachable, kube-proxy's REJECT of a Service without endpoints or a pod with nothing on the targetPort),
sends one datagram and waits TIMEOUT seconds (default 1) for the reply; prints what came.
"""
from __future__ import annotations

import socket
import sys


def serve(ip: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, port))
    print("ready", flush=True)
    while True:
        _data, peer = sock.recvfrom(2048)
        sock.sendto(b"ok", peer)


def ask(name: str, port: int, timeout: float) -> int:
    family, kind, proto, _canon, addr = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.settimeout(timeout)
        sock.connect(addr)
        sock.send(b"requests:1|c")
        try:
            reply = sock.recv(2048)
        except ConnectionRefusedError:
            print("refused", flush=True)
            return 1
        except TimeoutError:
            print("no reply", flush=True)
            return 2
    print(reply.decode(errors="replace"), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(ask(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 1.0))
