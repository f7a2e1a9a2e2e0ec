"""Is a variant's gain more than noise? Two checks the plan does not ask for, and needs.

- :func:`diebold_mariano`: a variant and its control forecast the same test stream, so their
  per-window losses can be compared window by window. The loss differential of H-step forecasts
  from overlapping windows is autocorrelated up to lag H-1, so its variance is estimated with a
  HAC (Newey-West, Bartlett weights) estimator over H-1 lags, with the Harvey-Leybourne-Newbold
  small-sample correction.
- :func:`noise_floor`: the control's own seed-to-seed spread. Two seeds of the control differ
  only in what is initialised or sampled online; a variant whose gain is smaller than that spread
  has not shown anything a reseeded control would not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DMResult:
    statistic: float  # negative: the first forecast has the lower loss
    p_value: float  # two-sided
    mean_difference: float  # mean of loss_a - loss_b
    windows: int
    lags: int


def diebold_mariano(loss_a, loss_b, horizon: int) -> DMResult:
    """Two-sided Diebold-Mariano test of equal expected loss of forecasts ``a`` and ``b``.

    ``loss_a`` and ``loss_b`` are per-window losses on the same windows, in time order;
    ``horizon`` is H (the variance uses lags 1..H-1). Identical losses give statistic 0, p 1.
    """
    a, b = np.asarray(loss_a, dtype=np.float64), np.asarray(loss_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"loss series must be 1-D and aligned (got {a.shape} and {b.shape})")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 (got {horizon})")
    n = a.size
    lags = horizon - 1
    if n < 2 * horizon:
        raise ValueError(f"{n} windows are too few for a Diebold-Mariano test at horizon "
                         f"{horizon} (need at least {2 * horizon})")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("loss series contain NaN or infinite values")
    d = a - b
    mean = float(d.mean())
    centred = d - mean
    variance = float(centred @ centred) / n
    for k in range(1, lags + 1):
        weight = 1.0 - k / (lags + 1)
        variance += 2.0 * weight * float(centred[k:] @ centred[:-k]) / n
    if variance <= 0.0:
        if mean == 0.0:
            return DMResult(0.0, 1.0, 0.0, n, lags)
        return DMResult(math.copysign(math.inf, mean), 0.0, mean, n, lags)
    statistic = mean / math.sqrt(variance / n)
    statistic *= math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    p_value = math.erfc(abs(statistic) / math.sqrt(2.0))  # normal: n is thousands of windows
    return DMResult(statistic, p_value, mean, n, lags)


def noise_floor(control_mse) -> float:
    """Relative seed-to-seed spread of the control: sample std / mean over its seeds.

    NaN with fewer than two seeds: with one seed the noise is unknown, not zero.
    """
    values = np.asarray(control_mse, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return math.nan
    return float(values.std(ddof=1) / values.mean())
