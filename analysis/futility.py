"""Futility: stop a variant once its gain over the control cannot reach the plan's threshold.

Most variants of the plan end within a few hundredths of a percent of their control, far from
the 0.5 % the plan asks for, yet each streams every test window. A variant is compared with its
control (same dataset, seed and backbone, which ran first) window by window: at each look, from
``min_share`` of the stream on and every ``look_every`` after, :func:`final_gain_bound` bounds
the gain it would have over the *whole* stream; when that bound is below ``min_gain``, the
variant is stopped, and counts as a gain below the threshold.

Repeated looks are paid for by **alpha spending** (:func:`analysis.significance.spent_alpha`,
Pocock type): each look is tested at its increment of the spending function, so the chance of
stopping a variant whose final gain would reach the bound's target, over all looks together, is
at most ``alpha``. The rule is pure numpy, so the Ray stopper (:mod:`tune.futility`), the
offline replay of finished trials (:func:`replay`) and the simulation that checks it
(:func:`simulate`, ``benchmarks/futility.py``) run the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.significance import GainBound, batch_means, final_gain_bound, spent_alpha
from analysis.simulate import loss_differential


@dataclass(frozen=True)
class FutilityRule:
    """When to look and when to stop (the ``stopping:`` section of a search space)."""

    min_gain: float = 0.005  # the plan's 0.5 %
    min_share: float = 0.25  # no look before this share of the stream
    look_every: float = 0.05  # then a look every this share
    alpha: float = 0.05  # chance of stopping, over all looks, a variant that would reach min_gain

    def looks(self, total: int) -> list[int]:
        """Windows seen at each look: ``ceil(share * total)`` for min_share, + look_every, ...
        (below the whole stream: at its end the trial has finished anyway)."""
        shares, share = [], self.min_share
        while share < 1.0 - 1e-9:
            shares.append(share)
            share = round(share + self.look_every, 9)
        return sorted({math.ceil(s * total) for s in shares})

    def level(self, looks: list[int], index: int, total: int) -> float:
        """One-sided level of look ``index``: its increment of the spending function."""
        before = looks[index - 1] / total if index else 0.0
        return spent_alpha(looks[index] / total, self.alpha) - spent_alpha(before, self.alpha)

    def check(self, control: np.ndarray, variant_seen: np.ndarray, index: int,
              horizon: int) -> Look:
        """Look ``index``: ``control`` is the control's whole per-window loss stream,
        ``variant_seen`` at least the variant's first ``looks(len(control))[index]`` windows."""
        total = len(control)
        looks = self.looks(total)
        n = looks[index]
        level = self.level(looks, index, total)
        bound = final_gain_bound(control[:n], variant_seen[:n], float(np.sum(control)), total,
                                 level, horizon)
        return Look(index, level, bound, bound.bound < self.min_gain)


@dataclass(frozen=True)
class Look:
    index: int
    level: float
    bound: GainBound
    stop: bool

    def record(self) -> dict[str, float | int]:
        """What a stopped trial writes into ``metrics.json`` as ``stopped_early``."""
        b = self.bound
        return {"window": b.windows, "of": b.total, "gain": b.gain, "bound": b.bound,
                "level": self.level, "look": self.index}


@dataclass
class FutilityMonitor:
    """One run's looks, in order: call :meth:`look` with the losses scored so far (a trial at
    each report, or a finished stream at once)."""

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


def first_stop(rule: FutilityRule, control: np.ndarray, variant: np.ndarray,
               horizon: int) -> Look | None:
    """The look at which ``rule`` stops ``variant`` (a finished stream), or None."""
    look = FutilityMonitor(rule, control, horizon).look(variant)
    return look if look is not None and look.stop else None


# ----------------------------------------------------------------------------- replay


def replay(trials: pd.DataFrame, rule: FutilityRule, curves) -> pd.DataFrame:
    """Where ``rule`` would have stopped each finished variant run, paired with its control as
    the verdicts pair it, beside the gain it reached over the whole stream. ``trials`` is
    :func:`analysis.loading.load_trials`'s table, ``curves`` its ``load_losses``."""
    from analysis.rules import PAIR_KEY  # the verdicts' own pairing

    valid = trials[trials["valid"] & ~trials["stopped"]]
    controls = valid[valid["direction"] == "control"].drop_duplicates(PAIR_KEY, keep="last")
    rows = []
    for index, run in valid[~valid["direction"].isin(["control", "baseline"])].iterrows():
        match = controls
        for key in PAIR_KEY:
            match = match[match[key] == run[key]]
        if match.empty:
            continue
        control = curves(match.iloc[0]["trial_path"], match.iloc[0]["experiment_path"])
        variant = curves(run["trial_path"], run["experiment_path"])
        if control is None or variant is None or len(control) != len(variant):
            continue
        look = first_stop(rule, control, variant, int(run["cfg.data.horizon"]))
        rows.append({
            "trial": index, "variant": run["variant"], "dataset": run["dataset"],
            "seed": run["seed"], "windows": len(variant),
            "stopped_at": look.bound.windows if look else math.nan,
            "gain_at_stop": look.bound.gain if look else math.nan,
            "bound": look.bound.bound if look else math.nan,
            "final_gain": float((control.sum() - variant.sum()) / control.sum()),
            "saved": 1.0 - look.bound.windows / len(variant) if look else 0.0,
            "look": look,
        })
    return pd.DataFrame(rows)


def as_stopped(trials: pd.DataFrame, replayed: pd.DataFrame) -> pd.DataFrame:
    """``trials`` as they would read had the replayed stops happened (for the verdicts)."""
    stopped = trials.copy()
    if replayed.empty:
        return stopped
    for row in replayed[replayed["look"].notna()].itertuples():
        b = row.look.bound
        stopped.loc[row.trial, ["stopped", "stopped_window", "stopped_of", "stopped_gain",
                                "stopped_bound"]] = [True, b.windows, b.total, b.gain, b.bound]
    return stopped


#: What a verdict decides; the replay says a verdict "differs" when any of these does.
OUTCOME = ["best_variant", "gained", "ineffective", "reproduced", "success"]


def verdict_changes(full: pd.DataFrame, stopped: pd.DataFrame, min_gain: float) -> pd.DataFrame:
    """Per (direction, dataset): the outcome of the full run and of the run with stops, and
    whether they differ. Inputs are :func:`analysis.rules.verdicts` tables."""
    def outcome(table: pd.DataFrame) -> pd.DataFrame:
        table = table.assign(gained=table["gain"] >= min_gain)
        keyed = table.set_index(["direction", "dataset", table["best_variant"].where(
            table["direction"] == "control", "")])
        return keyed[OUTCOME].map(lambda v: "" if v is None or v is pd.NA
                                  or (isinstance(v, float) and math.isnan(v)) else str(v))

    before, after = outcome(full), outcome(stopped)
    joined = before.join(after, lsuffix="_full", rsuffix="_stopped", how="outer")
    joined["differs"] = [any(r[f"{k}_full"] != r[f"{k}_stopped"] for k in OUTCOME)
                         for _, r in joined.iterrows()]
    return joined.reset_index(level=2, drop=True).reset_index()


def replay_experiments(experiments: list[str], rule: FutilityRule, rules=None
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Replay ``rule`` over finished experiments: the per-run table of :func:`replay` and the
    verdict comparison of :func:`verdict_changes`."""
    from analysis.loading import load_losses, load_trials
    from analysis.rules import Rules, variant_table, verdicts

    rules = rules or Rules()
    trials = load_trials(experiments)
    replayed = replay(trials, rule, load_losses)
    full = verdicts(variant_table(trials, rules), rules)
    stopped = verdicts(variant_table(as_stopped(trials, replayed), rules), rules)
    return (replayed.drop(columns="look", errors="ignore"),
            verdict_changes(full, stopped, rules.min_gain))


# ----------------------------------------------------------------------------- simulation


#: Spread of 8 batch means of the real loss differentials against the control, as a share of
#: the control's MSE (ETTm1 rerun of plan.yaml): A1 and B1-MLP (the noisiest variant); "4x B1"
#: is a stress case.
REAL_SPREAD = {"A1-like": 0.00098, "B1-like": 0.00456, "4x B1": 4 * 0.00456}


def scale_for(spread: float, total: int, horizon: int, kind: str) -> float:
    """The scale of :func:`analysis.simulate.loss_differential` whose 8 batch means spread
    like ``spread`` (averaged over 200 draws)."""
    rng = np.random.default_rng(0)
    unit = np.mean([batch_means(loss_differential(kind, total, horizon, rng), 8).std(ddof=1)
                    for _ in range(200)])
    return spread / float(unit)


@dataclass(frozen=True)
class Simulated:
    stopped: float  # share of simulated variants stopped
    wrong: float  # share stopped although their whole-stream gain reached min_gain
    saved: float  # mean share of windows not run


def simulate(rule: FutilityRule, gain: float, scale: float, replications: int, total: int,
             horizon: int, rng: np.random.Generator, kind: str = "persistent") -> Simulated:
    """Run ``rule`` on simulated variant streams against a control.

    The control's loss is 1 per window; the variant's is ``1 - gain + scale * d`` where ``d``
    is :func:`analysis.simulate.loss_differential` (overlap, plus a persistent drift for
    ``persistent``), so the variant's expected gain is ``gain`` and its differential is as
    dependent as real ones.
    """
    control = np.ones(total)
    stopped = wrong = 0
    saved = 0.0
    for _ in range(replications):
        variant = 1.0 - gain + scale * loss_differential(kind, total, horizon, rng)
        look = first_stop(rule, control, variant, horizon)
        if look is not None:
            stopped += 1
            wrong += bool(total - variant.sum() >= rule.min_gain * total)
            saved += 1.0 - look.bound.windows / total
    return Simulated(stopped / replications, wrong / replications, saved / replications)
