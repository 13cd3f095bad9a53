"""Where code runs: the device a name asks for, and the machine's name for results files.

The one place that training, evaluation, deployment, serving and the benchmarks resolve
``--device`` and name the machine a number was measured on.
"""

from __future__ import annotations

import platform
from typing import Optional, Union

import torch


def resolve_device(name: Union[str, torch.device]) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; ValueError otherwise."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device: {name!r} is not a device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    return device


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: Optional[Union[str, torch.device]] = None, *, threads: bool = True) -> str:
    """The GPU name for a CUDA device, else the CPU model name, with torch's thread count
    unless ``threads=False``: what results files name as the machine a number was measured
    on."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)" if threads else cpu_name()
