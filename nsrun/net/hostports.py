"""Host ports a sandbox publishes: reserved by a socket held for the sandbox's whole life, as Docker
does, so no host process can take one later and a clash is found before anything is set up. Port 0
asks the kernel for a free one, as `docker run -p 6379` does.

A TCP port is held by a listening socket: a bound one would not stop another socket that sets
SO_REUSEADDR from binding and listening on it; a UDP port is bound without SO_REUSEADDR, which
would let another socket share it."""

from __future__ import annotations

import dataclasses
import errno
import socket
from typing import TYPE_CHECKING

from nsrun.errors import ConflictError, NsrunError

if TYPE_CHECKING:
    from nsrun.firewall.rules import PortMapping

__all__ = ["reserve_host_port"]


def reserve_host_port(mapping: PortMapping) -> tuple[socket.socket, PortMapping]:
    """The held socket, and the mapping with its host port (the one chosen, for port 0)."""
    tcp = mapping.proto == "tcp"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    if tcp:
        # TIME_WAIT leftovers of earlier connections must not block: only a live listener does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((str(mapping.host_ip or "0.0.0.0"), mapping.host_port))  # noqa: S104  # all addresses: like -p 8081:80
        if tcp:
            sock.listen(1)  # DNAT sends the port's connections to the sandbox: none reach this one
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            from nsrun.process.liveness import port_holder

            holder = port_holder(mapping.host_port, mapping.proto)
            raise ConflictError(
                f"publishing host port {mapping.host_port}/{mapping.proto}",
                f"it is in use on the host by {holder}",
                "choose another host port",
            ) from err
        if err.errno == errno.EADDRNOTAVAIL:
            raise ConflictError(
                f"publishing on {mapping.host_ip}", "no such address on this host", "use one of the host's addresses"
            ) from err
        raise NsrunError(
            f"publishing host port {mapping.host_port}/{mapping.proto}", err.strerror or str(err), "choose another port"
        ) from err
    return sock, dataclasses.replace(mapping, host_port=sock.getsockname()[1])
