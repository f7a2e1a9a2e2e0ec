"""Simulated per-window loss differentials with the dependence of real online forecasts.

Used to check, by simulation, that a test of "variant and control have equal expected loss"
holds its size before its p-values are trusted (``benchmarks/significance_size.py`` and the CI
test of :mod:`analysis.significance`):

- ``overlap``: windows ``H`` steps long that overlap by ``H - 1`` rows share their errors, so the
  differential is an MA(H-1): a moving sum of ``H`` independent shocks;
- ``persistent``: the same plus an AR(1) component with coefficient ``0.999`` and the same
  variance, like the slow drift of two online learners that adapt at different speeds.

Both have unit marginal variance per component and mean ``shift``.
"""

from __future__ import annotations

import numpy as np

KINDS = ("overlap", "persistent")


def loss_differential(kind: str, n: int, horizon: int, rng: np.random.Generator,
                      shift: float = 0.0, ar: float = 0.999) -> np.ndarray:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} (got {kind!r})")
    shocks = rng.standard_normal(n + horizon - 1)
    d = np.convolve(shocks, np.full(horizon, 1.0 / np.sqrt(horizon)), mode="valid")
    if kind == "persistent":
        from scipy import signal  # here: trial workers import this module, SciPy costs ~1.5 s

        innovations = rng.standard_normal(n) * np.sqrt(1.0 - ar**2)
        start = rng.standard_normal()  # the stationary distribution's draw
        d = d + signal.lfilter([1.0], [1.0, -ar], innovations, zi=[ar * start])[0]
    return d + shift
