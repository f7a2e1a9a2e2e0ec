"""Futility stopping on Ray Tune: a :class:`ray.tune.Stopper` and the per-trial monitor feeding it.

The rule is :class:`analysis.futility.FutilityRule` (looks, alpha spending, the bound). Only the
trial sees its per-window losses, so each trial runs an
:class:`analysis.futility.FutilityMonitor` against its
control's losses (loaded once by the driver from ``stopping.controls`` and shipped with the
trial's context): at each look it reports ``futility/gain`` and ``futility/bound``, and when the
rule says stop, it first writes its results folder (``metrics.json`` with ``stopped_early``) and
then reports ``futility/stop``. :class:`FutilityStopper` ends the trial on that report; Tune's
function trainables report synchronously, so the trial stops exactly there.
"""

from __future__ import annotations

import logging

import numpy as np
import ray.tune

from analysis.futility import FutilityRule
from analysis.loading import load_losses, load_trials
from hmem.directions import BackboneRegime, Direction
from hmem.spaces import StoppingConfig

log = logging.getLogger(__name__)

STOP = "futility/stop"


def rule_of(stopping: StoppingConfig) -> FutilityRule:
    return FutilityRule(stopping.min_gain, stopping.min_share, stopping.look_every,
                        stopping.alpha)


def pair_key(dataset: str, seed: int, backbone_key: str,
             regime: BackboneRegime) -> tuple[str, int, str, BackboneRegime]:
    """What a variant and its control share: dataset, seed, backbone and its online regime."""
    return (dataset, int(seed), backbone_key, regime)


def control_losses(experiments: list[str]) -> dict[tuple, np.ndarray]:
    """Per-window test losses of every finished control run in ``experiments``, by
    :func:`pair_key` (a control run twice: the later experiment's)."""
    trials = load_trials(experiments)
    done = trials[trials["valid"] & (trials["direction"] == Direction.CONTROL)
                  & ~trials["stopped"]]
    found: dict[tuple, np.ndarray] = {}
    for row in done.itertuples():
        losses = load_losses(row.trial_path, row.experiment_path)
        if losses is not None:
            regime = BackboneRegime(bool(row.backbone_frozen), float(row.backbone_online_lr))
            found[pair_key(row.dataset, row.seed, row.backbone_key, regime)] = np.array(losses)
    log.info("futility stopping: %d control run(s) to compare with, from %s", len(found),
             ", ".join(experiments))
    return found


class FutilityStopper(ray.tune.Stopper):
    """Stops a trial whose report carries ``futility/stop`` (its monitor's decision)."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return bool(result.get(STOP, False))

    def stop_all(self) -> bool:
        return False
