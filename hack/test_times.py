"""Where pytest's time went, from its JUnit XML (hack/test.sh writes tests/output/pytest-junit.xml).

    python3 hack/test_times.py [JUNIT_XML] [--most N]

Prints the test files by the time their tests took (setup, call and teardown, summed over the workers that ran
them), with their count of tests: the files to look at when CI gets slower. Exits 0 whatever it finds.
"""
from __future__ import annotations

import argparse
import collections
import sys
import xml.etree.ElementTree as ET

DEFAULT_REPORT = "tests/output/pytest-junit.xml"


def file_times(report):
    """{test file (as a dotted module): (seconds, number of tests)} of a JUnit XML report."""
    seconds = collections.Counter()
    counts = collections.Counter()
    for case in ET.parse(report).iter("testcase"):
        module = case.get("classname", "?")
        seconds[module] += float(case.get("time") or 0)
        counts[module] += 1
    return {module: (seconds[module], counts[module]) for module in seconds}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", default=DEFAULT_REPORT)
    parser.add_argument("--most", type=int, default=15, help="how many files to list (default 15)")
    options = parser.parse_args(argv)
    try:
        times = file_times(options.report)
    except (OSError, ET.ParseError) as exc:
        print(f"test_times: no report to read: {exc}")
        return 0
    total = sum(seconds for seconds, _count in times.values())
    print(f"{'seconds':>8} {'share':>6} {'tests':>5}  test file (all workers: {total:.0f} s of tests)")
    for module, (seconds, count) in sorted(times.items(), key=lambda item: -item[1][0])[:options.most]:
        print(f"{seconds:8.0f} {seconds / total if total else 0:6.1%} {count:5d}  {module}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
