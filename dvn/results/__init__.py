"""Evaluation of trained runs and their results files (JSON, markdown table, PNG plots)."""

from .evaluate import accuracy, evaluate, latency, machine
from .report import attach_baselines, checks, markdown, plot, write

__all__ = ["accuracy", "attach_baselines", "checks", "evaluate", "latency", "machine",
           "markdown", "plot", "write"]
