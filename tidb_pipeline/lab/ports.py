"""Free local ports for private lab parts and test servers (the one helper; tests and benchmarks use it)."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768+ on Linux): a part restarted on it must find it free
    again, and an ephemeral port can meanwhile be taken as the local end of any client connection."""
    for _ in range(500):
        port = random.randint(21000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 21000-32000 for a private lab part")


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (see `free_port`)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports
