"""Helpers for tests that start processes of their own (Ray nodes, ``hmem`` drivers)."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def stop_group(process: subprocess.Popen, timeout: float = 60) -> None:
    """End a process group a test started: SIGTERM, then SIGKILL after ``timeout``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def stop_ray_node(process: subprocess.Popen, timeout: float = 60) -> None:
    """End a ``ray start --block`` node a test started, as ``ray stop`` would: SIGTERM to that
    process alone, which drains the node through the GCS and then stops the node's processes.
    (SIGTERM to its whole group also kills the GCS, and the drain then waits 30 s for it.)
    Whatever of the group is still there after the grace period is killed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # anyone left in the node's group?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
