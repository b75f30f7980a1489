#!/usr/bin/env python3
"""A user-space link emulator for benches/encfs-stream.sh, for kernels without tc netem.

Creates two TUN devices, A and B, and forwards every IP packet read from one to the other through a delay line:
each direction is a link of RATE bits/s (packets leave one after another at that rate) followed by DELAY_MS of
propagation delay; a direction whose queue exceeds LIMIT bytes drops packets (tail drop), as a router would. The
caller moves B into a network namespace and addresses both ends. Prints "ready" once both devices exist, runs
until killed, and prints per-direction byte counts on SIGTERM.

usage: netdelay.py DEV_A DEV_B DELAY_MS RATE_BITS_PER_S
"""
import collections
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def main():
    a, b = tun(sys.argv[1]), tun(sys.argv[2])
    delay = float(sys.argv[3]) / 1000.0
    rate = float(sys.argv[4]) / 8.0  # bytes per second
    # Room for twice the bandwidth-delay product of a round trip, and at least 4 MiB.
    limit = max(4 << 20, int(rate * delay * 4))
    out = {a: b, b: a}
    queues = {a: collections.deque(), b: collections.deque()}
    queued = {a: 0, b: 0}
    link_free = {a: 0.0, b: 0.0}
    moved = {a: 0, b: 0}
    dropped = {a: 0, b: 0}

    def report(*_):
        print(f"forwarded A->B {moved[a]} bytes, B->A {moved[b]} bytes; dropped {dropped[a]}+{dropped[b]} packets",
              file=sys.stderr, flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - now) if due else None
        readable, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            while True:
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if queued[fd] + len(pkt) > limit:
                    dropped[fd] += 1
                    continue
                # Serialization on the link, then propagation.
                start = max(now, link_free[fd])
                link_free[fd] = start + len(pkt) / rate
                queues[fd].append((link_free[fd] + delay, pkt))
                queued[fd] += len(pkt)
        now = time.monotonic()
        for fd, q in queues.items():
            while q and q[0][0] <= now:
                _, pkt = q.popleft()
                queued[fd] -= len(pkt)
                moved[fd] += len(pkt)
                try:
                    os.write(out[fd], pkt)
                except (BlockingIOError, OSError):
                    dropped[fd] += 1


if __name__ == "__main__":
    main()
