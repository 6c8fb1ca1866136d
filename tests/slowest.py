"""Where a pytest call's time went: worker-seconds per test module and the slowest tests, from its junit report.

Every pytest call of `nox -s tests` / `keras_floor` writes one (``.nox/<session venv>/pytest-N.xml``)::

    python tests/slowest.py .nox/tests-backend-tensorflow/pytest-1.xml
"""

import collections
import sys
import xml.etree.ElementTree as ElementTree


def main(paths, top=25):
    per_module, counts, tests = collections.Counter(), collections.Counter(), []
    for path in paths:
        for case in ElementTree.parse(path).getroot().iter("testcase"):
            module = case.get("classname", "").split(".")[-1]
            seconds = float(case.get("time", 0))
            per_module[module] += seconds
            counts[module] += 1
            tests.append((seconds, f"{module}::{case.get('name')}"))
    print(f"{sum(per_module.values()):.0f} worker-seconds in {len(tests)} tests")
    for module, seconds in per_module.most_common(top):
        print(f"{seconds:8.1f} s  {counts[module]:5d}  {module}")
    print("slowest tests:")
    for seconds, name in sorted(tests, reverse=True)[:top]:
        print(f"{seconds:8.1f} s  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
