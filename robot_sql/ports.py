"""Free TCP ports on loopback for the processes a test or a benchmark starts.

A port handed out here may stay unbound for seconds (a learner takes that long to start on a
loaded machine) while the kernel would offer it again: so no port is handed out twice by one
process (an actor once got its learner's data port).
"""
from __future__ import annotations

import contextlib
import socket

_handed_out: set[int] = set()


def free_port() -> int:
    return free_port_block(1)


def free_port_block(size: int) -> int:
    """A port p such that p .. p + size - 1 were all free just now and not handed out before."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        block = set(range(first, first + size))
        if block & _handed_out or first + size > 65536:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in block:
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.update(block)
        return first
    raise RuntimeError(f"no block of {size} free ports found on 127.0.0.1")
