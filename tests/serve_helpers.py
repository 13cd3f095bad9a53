"""A tiny served model and a server process on the loopback for the serve tests and bench."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import torch

import dvn
import dvn.deploy as dd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = [dd.TaskInput("grey", 1, (16, 16), 16, 1, (0.5,), (0.25,),
                      tuple(f"g{i}" for i in range(10))),
         dd.TaskInput("rgb", 3, (8, 8), 8, 3, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3),
                      tuple(f"r{i}" for i in range(6)))]


def tiny_unit_file(path: str) -> str:
    """WRN-8-1, k = 2: task 1 grey 16x16 (10 classes), task 2 RGB 8x8 (6 classes), with
    non-trivial batch norms, saved with its tasks' input descriptions."""
    torch.manual_seed(0)
    model = dvn.wrn(8, 1, units=2, num_classes=[10, 6], input_sizes=[16, 8],
                    image_channels=[1, 3])
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    dd.save(model.eval(), path, tasks=TASKS)
    return path


class ServerProcess:
    """``dvn serve`` in a child process on 127.0.0.1 and an ephemeral port; stops by itself
    (``stop``: SIGTERM, then kill after ``timeout``)."""

    def __init__(self, args: list[str], timeout: float = 60.0) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dvn", "serve", *args, "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        self.url = None
        while self.url is None:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("server did not start:\n" + "\n".join(self.log))
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if m:
                self.url = m.group(1)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            self.lines.put(line)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (kill past ``timeout``); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
