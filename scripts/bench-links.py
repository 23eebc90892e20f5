#!/usr/bin/env python3
"""Objects written the way git writes them, timed step by step:
    scripts/bench-links.py DIR [N]
N objects (default 2000) in 256 fan-out directories under DIR: each created under a
temporary name (mode 0444), 1,500 bytes written, closed, hard-linked to its final name, the
temporary name unlinked. Prints the mean microseconds of each step. Run it in a mount (and
in a plain directory beside it for scale); BENCHMARKS.md "session 4" compares the link step
of two builds with it. Not part of CI."""
import os
import sys
import time

if len(sys.argv) < 2:
    sys.exit(__doc__)
d, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000
for i in range(256):
    os.makedirs(f"{d}/objects/{i:02x}", exist_ok=True)
data = os.urandom(1500)
spent = [0.0, 0.0, 0.0]
for i in range(n):
    tmp, final = f"{d}/objects/{i % 256:02x}/tmp_obj_{i}", f"{d}/objects/{i % 256:02x}/{i:038x}"
    a = time.perf_counter()
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o444)
    os.write(fd, data)
    os.close(fd)
    b = time.perf_counter()
    os.link(tmp, final)
    c = time.perf_counter()
    os.unlink(tmp)
    e = time.perf_counter()
    spent = [spent[0] + b - a, spent[1] + c - b, spent[2] + e - c]
print("create+write %.0f µs, link %.0f µs, unlink %.0f µs, total %.0f µs per object"
      % tuple(x * 1e6 / n for x in spent + [sum(spent)]))
