"""Where a pytest call's time went: worker-seconds per test module and the slowest tests, from its junit report.

Every pytest call of `nox -s tests` / `keras_floor` writes one (``.nox/<session venv>/pytest-N.xml``)::

    python tests/slowest.py .nox/tests-backend-tensorflow/pytest-1.xml
    python tests/slowest.py --workers .nox/tests-backend-torch/pytest-1.xml   # how the xdist workers shared it

``--workers`` reads the junit properties conftest.py records for each test (its
xdist worker and its start): per worker, its busy seconds, when it ended after
the call's first test started, and its last tests.
"""

import collections
import sys
import xml.etree.ElementTree as ElementTree


def cases(paths):
    """(module, test name, seconds, junit properties) of every test in the reports."""
    for path in paths:
        for case in ElementTree.parse(path).getroot().iter("testcase"):
            properties = {item.get("name"): item.get("value") for item in case.iter("property")}
            yield case.get("classname", "").split(".")[-1], case.get("name"), float(case.get("time", 0)), properties


def main(paths, top=25):
    per_module, counts, tests = collections.Counter(), collections.Counter(), []
    for module, name, seconds, _ in cases(paths):
        per_module[module] += seconds
        counts[module] += 1
        tests.append((seconds, f"{module}::{name}"))
    print(f"{sum(per_module.values()):.0f} worker-seconds in {len(tests)} tests")
    for module, seconds in per_module.most_common(top):
        print(f"{seconds:8.1f} s  {counts[module]:5d}  {module}")
    print("slowest tests:")
    for seconds, name in sorted(tests, reverse=True)[:top]:
        print(f"{seconds:8.1f} s  {name}")


def workers(paths, last=3):
    runs = collections.defaultdict(list)  # worker -> [(start, seconds, test)]
    for module, name, seconds, properties in cases(paths):
        if "started" in properties:
            runs[properties.get("worker", "?")].append((float(properties["started"]), seconds, f"{module}::{name}"))
    if not runs:
        print("no worker properties in these reports (made before conftest.py recorded them)")
        return
    first = min(start for tests in runs.values() for start, _, _ in tests)
    for worker, tests in sorted(runs.items()):
        tests.sort()
        end = max(start + seconds for start, seconds, _ in tests) - first
        busy = sum(seconds for _, seconds, _ in tests)
        print(f"{worker}: {len(tests)} tests, busy {busy:.0f} s, ended at {end:.0f} s; last: "
              + ", ".join(f"{name} ({seconds:.0f} s)" for _, seconds, name in tests[-last:]))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if "--workers" in arguments:
        arguments.remove("--workers")
        workers(arguments)
    else:
        main(arguments)
