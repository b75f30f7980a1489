#!/usr/bin/env python3
"""Counts how the page cache holds a file: large folios (compound pages) or single 4 KiB pages.

Why: a warm re-read through FUSE is compared with a plain page-cache read (benches/encfs-read.sh), and that
comparison depends on folio size, which the daemon does not control. This shows it directly.

Usage (root: /proc/kpageflags): folio-sizes.py FILE [MIB (64)]. Maps the first MIB of FILE privately, touches every
page (a read fault maps the cached page; nothing is written), then looks up each page's flags.
"""
import mmap
import os
import struct
import sys
import ctypes

COMPOUND_HEAD, COMPOUND_TAIL = 1 << 15, 1 << 16


def main() -> None:
    path = sys.argv[1]
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    fd = os.open(path, os.O_RDONLY)
    size = min(os.fstat(fd).st_size, mib << 20) // 4096 * 4096
    # A private mapping is writable for ctypes; reading never copies a page.
    m = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    for off in range(0, size, 4096):
        _ = m[off]
    base = ctypes.addressof((ctypes.c_char * 1).from_buffer(m))
    heads = tails = single = absent = 0
    with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
        for off in range(0, size, 4096):
            pm.seek((base + off) // 4096 * 8)
            entry = struct.unpack("Q", pm.read(8))[0]
            if not entry >> 63:
                absent += 1
                continue
            kf.seek((entry & ((1 << 55) - 1)) * 8)
            flags = struct.unpack("Q", kf.read(8))[0]
            if flags & COMPOUND_HEAD:
                heads += 1
            elif flags & COMPOUND_TAIL:
                tails += 1
            else:
                single += 1
    large = heads + tails
    avg = f", {large * 4 // heads} KiB per large folio on average" if heads else ""
    print(f"{path}: {size >> 20} MiB: {large} pages in {heads} large folios{avg}; {single} single pages;"
          f" {absent} not mapped")


if __name__ == "__main__":
    main()
