"""The lab's cluster DNS: a dnspython UDP server answering A queries for the names it is given.

    python -m lab.net.dns_server BIND_IP NAME=IP [NAME=IP ...]

Known names: A -> their IP (TTL 30), any other type -> NOERROR with no answer (as CoreDNS
answers AAAA for an IPv4 Service); unknown names -> NXDOMAIN (what the search list's
expansions get). Prints "ready" once bound; runs until killed.
"""
from __future__ import annotations

import socket
import sys

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


def main(argv: list[str]) -> None:
    bind, table = argv[0], dict(arg.split("=", 1) for arg in argv[1:])
    names = {n.rstrip(".").lower() + ".": ip for n, ip in table.items()}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, 53))
    print("ready", flush=True)
    while True:
        wire, peer = sock.recvfrom(4096)
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            continue
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        q = query.question[0]
        ip = names.get(q.name.to_text().lower())
        if ip is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif q.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(q.name, 30, "IN", "A", ip))
        sock.sendto(reply.to_wire(), peer)


if __name__ == "__main__":
    main(sys.argv[1:])
