"""The built-in ``synthetic`` dataset: a deterministic stand-in for the benchmarks.

It has what makes online correction worthwhile (daily and weekly seasonality, a slow trend,
abrupt regime shifts in level, amplitude and cross-variable coupling) at 15-minute steps, so that
demos and tests run with no files. It is a pure function of its config: same rows, same numbers.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from hmem.config import SyntheticConfig
from hmem.data.loading import RawSeries

_GENERATOR_VERSION = 1  # bump when the formula changes, so caches keyed on it are not reused


def synthetic_series(cfg: SyntheticConfig) -> RawSeries:
    rows, variables = cfg.rows, cfg.variables
    rng = np.random.default_rng(20240601 + 7919 * variables)
    t = np.arange(rows, dtype=np.float64)
    day, week = 96.0, 96.0 * 7

    # Regimes switch at fixed fractions of the series; each has its own level, gain and mixing.
    cuts = (np.array([0.0, 0.31, 0.52, 0.74, 1.0]) * rows).astype(int)
    regime = np.searchsorted(cuts[1:-1], t, side="right")
    levels = rng.normal(0.0, 1.5, size=(len(cuts) - 1, variables))
    gains = rng.uniform(0.6, 1.8, size=(len(cuts) - 1, variables))
    phases = rng.uniform(0, 2 * np.pi, size=variables)
    drift = rng.normal(0.0, 0.6, size=variables) / rows

    daily = np.sin(2 * np.pi * t[:, None] / day + phases)
    weekly = 0.5 * np.sin(2 * np.pi * t[:, None] / week + 2 * phases)
    harmonic = 0.25 * np.sin(4 * np.pi * t[:, None] / day + phases / 3)
    seasonal = gains[regime] * (daily + weekly + harmonic)

    # AR(1) noise gives the short-range, partly predictable errors that a memory can exploit.
    shocks = rng.normal(0.0, 0.25, size=(rows, variables))
    noise = np.empty_like(shocks)
    noise[0] = shocks[0]
    for i in range(1, rows):
        noise[i] = 0.85 * noise[i - 1] + shocks[i]

    values = levels[regime] + drift * t[:, None] * 10 + seasonal + noise
    if variables > 1:  # the last variable follows a regime-dependent mix of the others (like OT)
        mix = rng.uniform(-1, 1, size=(len(cuts) - 1, variables - 1))
        values[:, -1] += 0.5 * np.einsum("tv,tv->t", values[:, :-1], mix[regime])

    dates = pd.date_range("2021-01-01", periods=rows, freq="15min")
    spec = {"generator": _GENERATOR_VERSION, **cfg.model_dump()}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    columns = tuple(f"v{i}" for i in range(variables - 1)) + ("OT",)
    return RawSeries("synthetic", dates, values, columns, digest)
