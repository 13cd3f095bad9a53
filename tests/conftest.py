"""Shared test fixtures: deterministic seeds; synthetic data and one thread for training tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)



@pytest.fixture
def synthetic(monkeypatch):
    """dvn.training loads its synthetic stand-in tasks instead of real datasets."""
    from dvn.data.synthetic import ENV
    monkeypatch.setenv(ENV, "1")


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small shared CPU, two threads that wait on each other make
    the tiny training steps of these tests 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
