"""Free TCP ports on 127.0.0.1 for the services the tests start (Ray heads, MLflow servers)."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that nothing listens on now.

    All probes stay bound until every port is read: a probe closed before the next bind lets
    the OS hand the same port out twice, and a Ray head given one port for two components
    refuses to start."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def free_port() -> int:
    """One port that nothing listens on now."""
    return free_ports(1)[0]
