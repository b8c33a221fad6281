"""The test run itself: ``scripts/test`` spreads tests over pytest-xdist workers with ``--dist loadgroup``, and the
suite relies on ``xdist_group`` marks being honoured (two-process DDP tests never side by side, a module's search
fixtures run once). pytest 9.2 silently broke that (pytest-dev/pytest-xdist issue 1386); this fails if it breaks."""

from __future__ import annotations

import pytest


@pytest.mark.xdist_group("test_setup")
def test_xdist_groups_are_honoured(request):
    if not request.config.getoption("loadgroup", default=False):  # set on the workers of --dist loadgroup
        pytest.skip("not run by pytest-xdist with --dist loadgroup (scripts/test does)")
    assert request.node.nodeid.endswith("@test_setup"), (
        f"{request.node.nodeid}: the xdist_group mark was ignored (pytest {pytest.__version__}); "
        "pyproject.toml's dev extra pins a pytest that honours it")
