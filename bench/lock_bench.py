"""Benchmark: what the host-wide lock costs a run of a module that changes a host (issue 24: at most 5 ms).

    source hack/env.sh && python bench/lock_bench.py [--repeat 1000]

Takes and releases the lock (module_utils/_lock.py: open, flock, the holder's name written, truncated, closed)
--repeat times in this process, on a file in a temporary directory of /dev/shm (a tmpfs, as /run/lock is), with
nobody else holding it: what every run that changes a host pays; a run in check mode does not take it. Prints
the median, the 99th percentile and the maximum. Nothing of the machine is changed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

# The collection as hack/env.sh puts it on the collections path.
sys.path.insert(0, os.environ["ANSIBLE_COLLECTIONS_PATH"].split(":")[0])
from ansible_collections.netns.expose.plugins.module_utils._lock import host_lock, lock_path  # noqa: E402  pylint: disable=wrong-import-position


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
        path = lock_path(directory)
        times = []
        for _take in range(args.repeat):
            started = time.perf_counter()
            with host_lock(path=path):
                pass
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    print(f"{'taken':>7}{'median ms':>11}{'p99 ms':>9}{'max ms':>9}")
    print(f"{args.repeat:>7}{statistics.median(times):>11.3f}{times[int(len(times) * 0.99) - 1]:>9.3f}{times[-1]:>9.3f}")
    print("\nthe goal: at most 5 ms for a run (issue 24)")


if __name__ == "__main__":
    main()
