"""The test harness itself (conftest.py, noxfile.py): what its time budget relies on, checked where it runs."""

import pytest


def test_a_modules_tests_share_one_xdist_worker_under_loadgroup(request):
    """nox runs the unit tests with `--dist loadgroup`, where conftest.py marks each module (but SPREAD's) as
    one xdist_group, so its module-scoped runs are made once. pytest-xdist appends the group to each test's
    id; pytest 9.2 ignores that (it builds the id from another field), and every module was split over the
    two workers, each making the module's runs again. pyproject's test extra excludes it."""
    if not getattr(request.config.option, "loadgroup", False):  # what xdist sets on its workers
        pytest.skip("runs under pytest-xdist --dist loadgroup, as nox runs the unit tests")
    assert request.node.get_closest_marker("xdist_group") is not None
    assert request.node.nodeid.endswith("@test_harness"), (
        f"pytest {pytest.__version__} ignores pytest-xdist's groups: {request.node.nodeid} has no @group suffix"
    )
