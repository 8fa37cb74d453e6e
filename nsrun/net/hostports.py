"""Host ports a sandbox publishes: reserved by binding them for the sandbox's whole life, as Docker
does, so no host process can take one later and a clash is found before anything is set up."""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

from nsrun.errors import ConflictError, NsrunError

if TYPE_CHECKING:
    from nsrun.firewall.rules import PortMapping

__all__ = ["reserve_host_port"]


def reserve_host_port(mapping: PortMapping) -> socket.socket:
    kind = socket.SOCK_STREAM if mapping.proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    # TIME_WAIT leftovers of earlier connections must not block: only a live listener does
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((str(mapping.host_ip or "0.0.0.0"), mapping.host_port))  # noqa: S104  # all addresses: like -p 8081:80
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
        raise NsrunError(f"publishing host port {mapping.host_port}/{mapping.proto}", str(err)) from err
    return sock
