"""The lab's userspace kube-proxy: accept on the node, dial the backend, copy bytes both ways.

    python -m lab.net.userspace_proxy LISTEN_IP LISTEN_PORT BACKEND_IP BACKEND_PORT

What kube-proxy's userspace mode did (the seed article's hyperkube): iptables sends the
ClusterIP's traffic to this port; each accepted connection gets its own outbound one (asyncio:
a non-blocking connect, as Go's dialer makes it). A refused dial closes the client's
connection without a reply. Prints "ready" once listening; runs until killed.
"""
from __future__ import annotations

import asyncio
import sys


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, backend: tuple[str, int]) -> None:
    try:
        backend_r, backend_w = await asyncio.open_connection(*backend)
    except OSError:
        client_w.close()  # the client sees an empty reply
        return
    await asyncio.gather(pump(client_r, backend_w), pump(backend_r, client_w), return_exceptions=True)


async def main(listen_ip: str, listen_port: int, backend: tuple[str, int]) -> None:
    server = await asyncio.start_server(lambda r, w: serve(r, w, backend), listen_ip, listen_port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ip, port, backend_ip, backend_port = sys.argv[1:5]
    asyncio.run(main(ip, int(port), (backend_ip, int(backend_port))))
