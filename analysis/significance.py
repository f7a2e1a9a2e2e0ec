"""Is a variant's gain more than noise? Two checks the plan does not ask for, and needs.

- :func:`loss_difference_test`: a variant and its control forecast the same test stream, so their
  per-window losses can be compared window by window. The loss differential is far from
  independent: overlapping H-step windows make it an MA(H-1), and online learners drift, so it
  also carries components that persist for thousands of windows. A Diebold-Mariano test with
  Bartlett weights over H-1 lags (what this module did before) rejects a true null 11 % of the
  time at a nominal 5 % under overlap alone, and 59 % with a persistent AR(0.999) component.
  The test here is the **batch-means t-test** (a fixed-b HAC estimator): the stream is cut into
  ``batches`` contiguous blocks (8 by default, each about 5,000 windows of ETTm1, seven weeks),
  and scipy's one-sample t-test (``batches - 1`` degrees of freedom) runs on the block means.
  Blocks far longer than the dependence make their means nearly independent, and the t
  distribution with few degrees of freedom pays for what remains; its size, simulated by
  ``benchmarks/significance_size.py`` and checked in CI, stays inside [2 %, 8 %] in both cases.
  A moving or stationary block bootstrap (``arch``) with data-driven block length was simulated
  beside it and over-rejects under the persistent component (see that benchmark).
- :func:`combine_seeds`: seeds of one variant share the test stream, so their tests are not
  independent. Each seed is tested on its own paired differential (variant seed s against
  control seed s), and they are combined as an intersection-union test: the combined p-value is
  the largest per-seed p-value when every seed's difference has the same sign, and 1 otherwise.
  It is valid whatever the dependence between seeds, and says "significant" only when every
  seed is.
- :func:`noise_floor`: the control's own seed-to-seed spread. Two seeds of the control differ
  only in what is initialised or sampled online; a variant whose gain is smaller than that spread
  has not shown anything a reseeded control would not. It needs ``MIN_NOISE_SEEDS`` (3) seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Blocks of the batch-means test; fewer blocks hold the size under stronger persistence.
BATCHES = 8
#: Control seeds the noise floor needs: a spread from two values is one difference, not a spread.
MIN_NOISE_SEEDS = 3


@dataclass(frozen=True)
class DifferenceTest:
    statistic: float  # t statistic; negative: the first forecast has the lower loss
    p_value: float  # two-sided
    mean_difference: float  # mean of loss_a - loss_b
    windows: int
    batches: int


def _aligned(loss_a, loss_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(loss_a, dtype=np.float64), np.asarray(loss_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"loss series must be 1-D and aligned (got {a.shape} and {b.shape})")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("loss series contain NaN or infinite values")
    return a, b


def batch_means(d: np.ndarray, batches: int) -> np.ndarray:
    """Means of ``batches`` contiguous blocks of ``d`` (the last ``len(d) % batches`` values
    join the last block)."""
    return np.array([block.mean() for block in np.array_split(d, batches)])


def loss_difference_test(loss_a, loss_b, horizon: int, batches: int = BATCHES) -> DifferenceTest:
    """Two-sided test of equal expected loss of forecasts ``a`` and ``b`` on the same windows.

    ``loss_a`` and ``loss_b`` are per-window losses in time order; every block must span at least
    ``2 * horizon`` windows, or the overlap alone would couple neighbouring blocks. Identical
    losses give statistic 0, p 1.
    """
    a, b = _aligned(loss_a, loss_b)
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 (got {horizon})")
    if batches < 2:
        raise ValueError(f"batches must be >= 2 (got {batches})")
    n = a.size
    if n < 2 * horizon * batches:
        raise ValueError(f"{n} windows are too few for a batch-means test of {batches} blocks at "
                         f"horizon {horizon} (need at least {2 * horizon * batches})")
    d = a - b
    mean = float(d.mean())
    means = batch_means(d, batches)
    if np.ptp(means) == 0.0:
        if mean == 0.0:
            return DifferenceTest(0.0, 1.0, 0.0, n, batches)
        return DifferenceTest(math.copysign(math.inf, mean), 0.0, mean, n, batches)
    from scipy import stats  # here: a trial worker imports this module, and SciPy costs it ~1.5 s

    result = stats.ttest_1samp(means, 0.0)
    return DifferenceTest(float(result.statistic), float(result.pvalue), mean, n, batches)


@dataclass(frozen=True)
class CombinedTest:
    p_value: float  # intersection-union: the largest per-seed p if all signs agree, else 1
    seed_p_values: tuple[float, ...]
    agree: bool  # every seed's mean difference has the same sign


def combine_seeds(tests: Sequence[DifferenceTest]) -> CombinedTest:
    """Combine per-seed tests of one variant against its control (see the module docstring)."""
    if not tests:
        raise ValueError("no per-seed test to combine")
    signs = {math.copysign(1.0, t.mean_difference) for t in tests if t.mean_difference != 0}
    p_values = tuple(t.p_value for t in tests)
    agree = len(signs) == 1
    return CombinedTest(max(p_values) if agree else 1.0, p_values, agree)


def noise_floor(control_mse) -> float:
    """Relative seed-to-seed spread of the control: sample std / mean over its seeds.

    NaN with fewer than ``MIN_NOISE_SEEDS`` seeds: the noise is then unknown, not zero.
    """
    values = np.asarray(control_mse, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < MIN_NOISE_SEEDS:
        return math.nan
    return float(values.std(ddof=1) / values.mean())


# ----------------------------------------------------------------------------- futility


def spent_alpha(share: float, alpha: float) -> float:
    """Type-I error spent by the time ``share`` of the stream is seen: the Lan-DeMets spending
    function of Pocock type, ``alpha * ln(1 + (e - 1) * share)`` (``alpha`` at the end).

    Pocock-type spending gives the early looks a usable share of ``alpha`` (O'Brien-Fleming-type
    spending keeps almost all of it for the end), which is what stopping early needs. Each look
    is tested at its increment, so whatever the dependence between looks, the chance that any
    look stops a variant that deserved to run on is at most ``alpha`` (a union bound).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1] (got {share})")
    return alpha * math.log1p((math.e - 1.0) * share)


@dataclass(frozen=True)
class GainBound:
    windows: int  # windows seen
    total: int  # windows of the whole stream
    gain: float  # (control - variant) / control over the windows seen
    bound: float  # upper prediction bound of the gain over the whole stream


def final_gain_bound(control, variant, control_total: float, total: int, level: float,
                     horizon: int, batches: int = BATCHES) -> GainBound:
    """Upper bound, at one-sided ``level``, of a variant's gain over its control on the whole
    stream, from the first ``len(variant)`` windows.

    The windows seen count as they are. The sum of the loss differential over the windows still
    to come is predicted from the batch means of the seen differential (the test of
    :func:`loss_difference_test`, t with ``batches - 1`` degrees of freedom), with the spread of
    its mean and of the windows to come both in the prediction: for ``n`` of ``N`` windows seen
    the future sum is ``(N - n) * mean`` with standard error ``se * sqrt(N * (N - n))`` where
    ``se`` is the batch-means standard error of the mean. The gain's denominator is the
    control's loss over the whole stream, ``control_total``, known because the control has run.
    """
    c, v = _aligned(control, variant)
    n = c.size
    if not 0 < n <= total:
        raise ValueError(f"{n} windows seen of a stream of {total}")
    if n < 2 * horizon * batches:
        raise ValueError(f"{n} windows are too few to bound the gain with {batches} blocks at "
                         f"horizon {horizon} (need at least {2 * horizon * batches})")
    d = c - v
    means = batch_means(d, batches)
    se = float(means.std(ddof=1)) / math.sqrt(batches)
    from scipy import stats

    quantile = float(stats.t.ppf(1.0 - level, batches - 1))
    seen = float(d.sum())
    predicted = (total - n) * float(d.mean()) + quantile * se * math.sqrt(total * (total - n))
    return GainBound(n, total, seen / float(c.sum()), (seen + predicted) / control_total)
