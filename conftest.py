"""Repository-wide pytest hooks: GPU tests skip without a GPU; CI fails if nothing passed."""

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    """With DVN_REQUIRE_TESTS=1 (scripts/test), a run in which no test passed fails."""
    if os.environ.get("DVN_REQUIRE_TESTS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", [])) if reporter else 0
    if passed == 0 and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        print("\nerror: no test passed (DVN_REQUIRE_TESTS=1)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
