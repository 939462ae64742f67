#!/usr/bin/env python3
"""Time per getxattr, listxattr and lstat on a mount's files, as a build's
naive diff makes them (most of a podman build's requests on a FUSE union).
Usage: xattr_roundtrip.py MOUNTPOINT (with files f0..f199 at its root).
Prints the median of 3 runs of 20,000 calls each, in microseconds."""
import os
import sys
import time

m = sys.argv[1]
paths = [os.path.join(m, "f%d" % i) for i in range(200)]


def run(fn, n=20000):
    t = time.perf_counter()
    for i in range(n):
        try:
            fn(paths[i % len(paths)])
        except OSError:
            pass
    return (time.perf_counter() - t) / n * 1e6


calls = [("getxattr", lambda p: os.getxattr(p, "security.capability", follow_symlinks=False)),
         ("listxattr", lambda p: os.listxattr(p, follow_symlinks=False)),
         ("lstat", os.lstat)]
for name, fn in calls:
    print("%s %.2f us" % (name, sorted(run(fn) for _ in range(3))[1]))
