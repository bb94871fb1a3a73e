"""Loopback ports for the processes the tests start, and for "nothing listens here".

A port found by binding to port 0 and closing the socket is free only for a moment: until the
process told to use it has bound it, the kernel may give it to any other socket (a fake server,
an outgoing connection), the more so when several test processes (pytest-xdist workers) share
the machine. So ports are handed out from just below the kernel's ephemeral range, which it
never picks by itself; each worker has its own share of them, hands each out once per run
(until the share wraps around), and only if it can be bound at that moment.
"""

from __future__ import annotations

import os
import random
import re
import socket
from collections.abc import Iterator
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_LOW = 32768  # Linux's default, and below the 49152 where others start
SPAN = 8192  # the ports below the ephemeral range shared out between the workers
LOWEST = 10000
MIN_SHARE = 256
MAX_TRIES = 1000


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def worker_share() -> range:
    """This worker's ports: its slice of the ``SPAN`` ports below the ephemeral range."""
    high = _ephemeral_low()
    low = max(LOWEST, high - SPAN)
    digits = re.search(r"\d+", os.environ.get("PYTEST_XDIST_WORKER", ""))
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    index = (int(digits.group()) if digits else 0) % count
    size = (high - low) // count
    return range(low + index * size, low + (index + 1) * size)


def _ports() -> Iterator[int]:
    share = worker_share()
    if len(share) < MIN_SHARE:
        while True:  # no room below the ephemeral range: let the kernel choose
            yield 0
    start = random.randrange(len(share))
    while True:
        yield from share[start:]
        yield from share[:start]
        start = 0


_next_port = _ports()


def _bindable(port: int) -> int | None:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return None
        return int(sock.getsockname()[1])


def free_port() -> int:
    """A loopback port nothing listens on, for a process to bind or a client to be refused."""
    for _ in range(MAX_TRIES):
        found = _bindable(next(_next_port))
        if found is not None:
            return found
    raise RuntimeError(f"no bindable loopback port in {worker_share()} after {MAX_TRIES} tries")


def closed_port_url() -> str:
    """A loopback URL nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"
