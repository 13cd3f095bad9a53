"""Shared test fixtures: deterministic seeds, a marker for tests that need the extension."""

import pytest
import torch

import dvn_kernels


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


requires_cpu_kernel = pytest.mark.skipif(
    "cpu" not in dvn_kernels.available_backends("cpu"),
    reason="the C++ extension dvn_kernels._C is not built")
