"""Benchmarks of dvn (run from the repository root: python -m bench.conv)."""
