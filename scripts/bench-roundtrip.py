#!/usr/bin/env python3
"""The cost of one FUSE round trip as a caller sees it (issue 19, `mount --io-uring`):
    scripts/bench-roundtrip.py FILE [COUNT]
times COUNT (20,000) getxattr calls of a name FILE does not have (each one request that the
daemon answers without touching the volume) and prints the mean time per call with how
often this process moved between CPUs meanwhile. Run it on a file of a /dev/fuse mount and
of an --io-uring mount of the same volume."""
import os
import sys
import time


def sched():
    """This process's CPU migrations so far."""
    for line in open("/proc/self/sched"):
        if line.startswith("se.nr_migrations"):
            return int(line.split()[-1])
    return 0


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    path, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    moved, t = sched(), time.perf_counter()
    for _ in range(count):
        try:
            os.getxattr(path, "user.envelopefs-roundtrip-probe")
        except OSError:
            pass
    dt = time.perf_counter() - t
    print(f"{path}: {dt / count * 1e6:.1f} µs per round trip, {sched() - moved} CPU migrations in {count}")


main()
