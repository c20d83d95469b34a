"""The lab's cluster DNS: a dnspython server answering A queries for the names it is given, over
UDP and TCP.

    python -m lab.net.dns_server BIND_IP NAME=IP [+NAME=IP ...]

Known names: A (AAAA for an IPv6 address) -> their IP (TTL 30), any other type -> NOERROR with
no answer (as CoreDNS answers AAAA for an IPv4 Service); unknown names -> NXDOMAIN (what the search list's
expansions get). A name given as +NAME is answered over UDP truncated (TC, no records), as a
big answer is: the client asks again over TCP, where it gets the answer. Prints "ready" once
bound; runs until killed.
"""
from __future__ import annotations

import socket
import struct
import sys
import threading

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class Zone:
    def __init__(self, args: list[str]) -> None:
        self.names: dict[str, str] = {}
        self.truncated: set[str] = set()  # answered over UDP with TC only
        for arg in args:
            name, ip = arg.split("=", 1)
            fqdn = name.lstrip("+").rstrip(".").lower() + "."
            self.names[fqdn] = ip
            if name.startswith("+"):
                self.truncated.add(fqdn)

    def answer(self, wire: bytes, udp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        q = query.question[0]
        name = q.name.to_text().lower()
        ip = self.names.get(name)
        if ip is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif udp and name in self.truncated:
            reply.flags |= dns.flags.TC
        elif q.rdtype == (dns.rdatatype.AAAA if ":" in ip else dns.rdatatype.A):
            reply.answer.append(dns.rrset.from_text(q.name, 30, "IN", "AAAA" if ":" in ip else "A", ip))
        return reply.to_wire()


def serve_tcp(sock: socket.socket, zone: Zone) -> None:
    """Length-prefixed queries (RFC 1035 4.2.2), one connection at a time, until the client closes."""
    while True:
        conn, _peer = sock.accept()
        with conn, conn.makefile("rb") as stream:
            while (head := stream.read(2)) and len(head) == 2:
                wire = stream.read(struct.unpack("!H", head)[0])
                reply = zone.answer(wire, udp=False)
                if reply is None:
                    break
                conn.sendall(struct.pack("!H", len(reply)) + reply)


def main(argv: list[str]) -> None:
    bind, zone = argv[0], Zone(argv[1:])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((bind, 53))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((bind, 53))
    tcp.listen(16)
    threading.Thread(target=serve_tcp, args=(tcp, zone), daemon=True).start()
    print("ready", flush=True)
    while True:
        wire, peer = udp.recvfrom(4096)
        reply = zone.answer(wire, udp=True)
        if reply is not None:
            udp.sendto(reply, peer)


if __name__ == "__main__":
    main(sys.argv[1:])
