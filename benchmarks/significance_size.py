"""Size (and power) of the loss-difference tests on simulated, dependent loss differentials.

Prints, for each simulated case of ``analysis.simulate``, how often each test rejects a true
null at a nominal 5 % (its size; a valid test stays near 5 %, CI requires [2 %, 8 %] of the one
the verdicts use), and how often it detects a true difference (power):

- ``batch means (8)``: the verdicts' test (``analysis.significance.loss_difference_test``);
- ``DM, Bartlett H-1``: the Diebold-Mariano test the verdicts used before (kept here only as the
  figure to compare with);
- ``stationary bootstrap``: ``arch``'s stationary bootstrap of the mean with the Politis-White
  optimal block length, at least a week of 15-minute windows (672); slower, fewer replications.

    python benchmarks/significance_size.py [--replications 2000] [--bootstrap-replications 200]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from arch.bootstrap import StationaryBootstrap, optimal_block_length

from analysis.significance import loss_difference_test
from analysis.simulate import KINDS, loss_differential

WEEK = 7 * 24 * 4  # windows of 15-minute data in a week


def dm_bartlett(d: np.ndarray, horizon: int) -> float:
    """The old test's p-value: Newey-West over H-1 lags, HLN correction, normal reference."""
    n, lags = d.size, horizon - 1
    c = d - d.mean()
    variance = float(c @ c) / n
    for k in range(1, lags + 1):
        variance += 2.0 * (1.0 - k / (lags + 1)) * float(c[k:] @ c[:-k]) / n
    statistic = d.mean() / math.sqrt(variance / n)
    statistic *= math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    return math.erfc(abs(statistic) / math.sqrt(2.0))


def bootstrap_p(d: np.ndarray, rng: np.random.Generator, reps: int) -> float:
    block = max(WEEK, float(optimal_block_length(d)["stationary"].iloc[0]))
    boot = StationaryBootstrap(block, d - d.mean(), seed=rng)
    means = boot.apply(np.mean, reps).ravel()
    return float(np.mean(np.abs(means) >= abs(d.mean())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=2000)
    parser.add_argument("--bootstrap-replications", type=int, default=200)
    parser.add_argument("--windows", type=int, default=43000, help="stream length (ETTm1 test)")
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--shift", type=float, default=0.6,
                        help="mean differential of the power rows, in marginal sds")
    args = parser.parse_args()
    n, h = args.windows, args.horizon
    print(f"{n} windows, H = {h}, nominal level 5 %")
    print(f"{'case':<22}{'test':<24}{'replications':>13}{'rejects':>10}{'s':>8}")
    for kind in KINDS:
        for label, shift in (("null", 0.0), (f"shift {args.shift:g}", args.shift)):
            rng = np.random.default_rng(11)
            began, new, old = time.perf_counter(), [], []
            for _ in range(args.replications):
                d = loss_differential(kind, n, h, rng, shift=shift)
                new.append(loss_difference_test(d, np.zeros(n), h).p_value < 0.05)
                old.append(dm_bartlett(d, h) < 0.05)
            seconds = time.perf_counter() - began
            case = f"{kind}, {label}"
            print(f"{case:<22}{'batch means (8)':<24}{args.replications:>13}"
                  f"{100 * np.mean(new):>9.1f}%{seconds:>8.1f}")
            print(f"{case:<22}{'DM, Bartlett H-1':<24}{args.replications:>13}"
                  f"{100 * np.mean(old):>9.1f}%")
            if args.bootstrap_replications and shift == 0.0:
                began, boot = time.perf_counter(), []
                for _ in range(args.bootstrap_replications):
                    d = loss_differential(kind, n, h, rng)
                    boot.append(bootstrap_p(d, rng, 199) < 0.05)
                print(f"{case:<22}{'stationary bootstrap':<24}{args.bootstrap_replications:>13}"
                      f"{100 * np.mean(boot):>9.1f}%{time.perf_counter() - began:>8.1f}")


if __name__ == "__main__":
    main()
