"""Seeded initialisation without touching the process's random state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded to ``seed``, then restore it.

    Modules draw their initial weights (and dropout its masks) from the global generator, so
    seeding it is how a config's seed reaches them; forking it keeps library code from leaving
    process-wide state changed for whoever called it (a notebook, another trial in the process).
    Only the CPU generator is seeded: every module here is built and pretrained on the CPU.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
