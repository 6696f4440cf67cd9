#!/usr/bin/env python3
"""Prints N distinct free TCP ports on 127.0.0.1, one per line (default 1).

The ports come from below the kernel's ephemeral range
(net.ipv4.ip_local_port_range): a port handed out by binding port 0 is an
ephemeral one, and any outgoing connection made before the server binds it
may take it as its local port ("Address already in use" at start-up, seen
in CI). Each port is checked by binding it, and all are held until every
one is chosen, so none is printed twice. Falls back to ephemeral ports when
the range leaves too little room below it. Standard library only.
"""

import random
import socket
import sys

LOWEST = 10000


def ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    high = ephemeral_low()
    held = []
    if high - LOWEST >= 100 * n:
        for port in random.sample(range(LOWEST, high), min(high - LOWEST, 2000)):
            if len(held) == n:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
    while len(held) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        held.append(s)
    for s in held:
        print(s.getsockname()[1])


if __name__ == "__main__":
    main()
