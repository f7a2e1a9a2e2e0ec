"""Futility stopping on Ray Tune: a :class:`ray.tune.Stopper` and the per-trial monitor feeding it.

The rule is :class:`analysis.futility.FutilityRule` (looks, alpha spending, the bound). Only the
trial sees its per-window losses, so each trial runs a :class:`FutilityMonitor` against its
control's losses (loaded once by the driver from ``stopping.controls`` and shipped with the
trial's context): at each look it reports ``futility/gain`` and ``futility/bound``, and when the
rule says stop, it first writes its results folder (``metrics.json`` with ``stopped_early``) and
then reports ``futility/stop``. :class:`FutilityStopper` ends the trial on that report; Tune's
function trainables report synchronously, so the trial stops exactly there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import ray.tune

from analysis.futility import FutilityRule, Look
from analysis.loading import load_losses, load_trials
from hmem.config import TrialConfig
from hmem.directions import Direction
from hmem.spaces import StoppingConfig

log = logging.getLogger(__name__)

STOP = "futility/stop"


def rule_of(stopping: StoppingConfig) -> FutilityRule:
    return FutilityRule(stopping.min_gain, stopping.min_share, stopping.look_every,
                        stopping.alpha)


def pair_key(cfg: TrialConfig, backbone_key: str) -> str:
    """What a variant and its control share: dataset, seed, backbone and its online regime."""
    regime = cfg.backbone_regime
    return (f"{cfg.data.dataset}|{cfg.seed}|{backbone_key}|"
            f"{'frozen' if regime.frozen else f'online@{regime.online_lr!r}'}")


def control_losses(experiments: list[str]) -> dict[str, np.ndarray]:
    """Per-window test losses of every finished control run in ``experiments``, by
    :func:`pair_key` (a control run twice: the later experiment's)."""
    trials = load_trials(experiments)
    done = trials[trials["valid"] & (trials["direction"] == Direction.CONTROL)
                  & ~trials["stopped"]]
    found: dict[str, np.ndarray] = {}
    for row in done.itertuples():
        losses = load_losses(row.trial_path, row.experiment_path)
        if losses is None:
            continue
        regime = "frozen" if row.backbone_frozen else f"online@{row.backbone_online_lr!r}"
        found[f"{row.dataset}|{row.seed}|{row.backbone_key}|{regime}"] = np.array(losses)
    log.info("futility stopping: %d control run(s) to compare with, from %s", len(found),
             ", ".join(experiments))
    return found


@dataclass
class FutilityMonitor:
    """One trial's looks: call :meth:`look` with the losses scored so far at every report."""

    rule: FutilityRule
    control: np.ndarray
    horizon: int
    next_look: int = 0

    def look(self, seen: np.ndarray) -> Look | None:
        """The latest look that ``seen`` windows allow (the stopping one, if any look stops)."""
        looks = self.rule.looks(len(self.control))
        latest = None
        while self.next_look < len(looks) and looks[self.next_look] <= len(seen):
            try:
                latest = self.rule.check(self.control, seen, self.next_look, self.horizon)
            except ValueError:  # too few windows for the batch means at this look
                latest = None
            self.next_look += 1
            if latest is not None and latest.stop:
                break
        return latest


class FutilityStopper(ray.tune.Stopper):
    """Stops a trial whose report carries ``futility/stop`` (its monitor's decision)."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return bool(result.get(STOP, False))

    def stop_all(self) -> bool:
        return False
