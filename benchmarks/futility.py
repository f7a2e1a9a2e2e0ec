"""How often the futility rule stops a variant, on simulated streams as dependent as real ones.

For variants with a true gain of 0, 0.5 % (the threshold) and 1 %, prints the share of simulated
streams stopped, the share stopped *wrongly* (their whole-stream gain reached 0.5 %) and the mean
share of windows saved, under the two dependence cases of ``analysis.simulate`` and two noise
levels calibrated on the ETTm1 rerun: the spread of 8 batch means of the differential, relative
to the control's MSE, is 0.10 % for A1 against its control and 0.46 % for B1-MLP (the noisiest
variant); ``4x`` is a stress case. CI asserts the ``B1-like`` persistent rows (tests/test_futility).

    python benchmarks/futility.py [--replications 500]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from analysis.futility import REAL_SPREAD, FutilityRule, scale_for, simulate
from analysis.simulate import KINDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=500)
    parser.add_argument("--windows", type=int, default=43105, help="stream length (ETTm1 test)")
    parser.add_argument("--horizon", type=int, default=96)
    args = parser.parse_args()
    rule = FutilityRule()
    print(f"{args.windows} windows, H = {args.horizon}; rule: looks from "
          f"{100 * rule.min_share:g}% every {100 * rule.look_every:g}%, stop when the bound on "
          f"the final gain < {100 * rule.min_gain:g}%, alpha {rule.alpha} (Pocock spending); "
          f"{args.replications} streams per row")
    print(f"{'case':<12} {'noise':<8} {'true gain':>9} {'stopped':>8} {'wrongly':>8} "
          f"{'saved':>6}")
    started = time.perf_counter()
    for kind in KINDS:
        for name, spread in REAL_SPREAD.items():
            scale = scale_for(spread, args.windows, args.horizon, kind)
            for gain in (0.0, 0.005, 0.01):
                result = simulate(rule, gain, scale, args.replications, args.windows,
                                  args.horizon, np.random.default_rng(1), kind)
                print(f"{kind:<12} {name:<8} {100 * gain:>8.1f}% {100 * result.stopped:>7.1f}% "
                      f"{100 * result.wrong:>7.1f}% {100 * result.saved:>5.1f}%")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
