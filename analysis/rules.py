"""The plan's rules (section 5 of the H-Mem 2.1 plan) as functions of the trials table, read
strictly.

The thresholds live in one typed object, :class:`Rules`, with the plan's defaults.

**Selection and scoring.** Anything chosen (the best variant of a direction, the best CHRC-free
baseline) is chosen on validation data, never on the test stream: on the warm-up (validation)
MSE where the dataset warms up, and otherwise (Weather) on the first ``selection_share`` of the
test stream, in which case every test figure (MSE, gains, tests) is computed on the rest of the
stream only. The report states which.

- a run's **paired gain** is ``(mse_control - mse_variant) / mse_control`` against the control
  run of the same dataset, seed, backbone key *and backbone online learning rate* (a
  frozen-backbone variant is paired with the frozen-backbone control, ``p2p7p8_frozen``);
- a variant is **inert** when its mechanism did not measurably act (the probe's figures, see
  ``hmem/online/probe.py``, against :attr:`Rules.acted`): it says nothing about the idea, so it
  never counts towards "ineffective" and never closes a gate;
- a direction is **ineffective** on a dataset when two consecutive experiments of it that acted
  (in the order the search spaces declare them) gain less than ``min_gain`` (0.5 %);
- **reproduced**: the best variant is chosen on the validation MSE of its first
  ``selection_seeds`` seed(s); at least ``min_reproductions`` (2) *further* seeds must have run,
  and *each* must beat its control by ``min_gain``; a losing reproduction seed is named;
- **success** holds per seed: a reproduced variant whose every reproduction seed is below the
  dataset's MSE threshold (ETTm1 0.700, Weather 1.45);
- the **gates** of plan 5.2: A2 only if A1 gained (an inert A1 closes nothing); S3 combines the
  best A with the best B, each chosen on validation among the variants that gained.

Beyond the plan, every verdict shows the gain over the **strongest simple baseline** (the
CHRC-free run with the best validation MSE on the same dataset, backbone and backbone regime:
among the ``online_*`` learning rates for a learning backbone, ``frozen`` for a frozen one), the
p-value of a dependence-robust test of equal loss against the control (per seed, combined;
:mod:`analysis.significance`), and whether the gain is below the control's seed-to-seed **noise
floor** (which needs 3 control seeds). A missing control, a single seed, ties, NaN metrics and
mixed backbone keys each produce a stated verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis.loading import AnalysisError, load_losses
from analysis.significance import (
    MIN_NOISE_SEEDS,
    combine_seeds,
    loss_difference_test,
    noise_floor,
)
from hmem.directions import BackboneRegime, Direction


@dataclass(frozen=True)
class Acted:
    """A direction acted when its probe ``figure`` is at least ``at_least`` (or, for figures
    where a high value means "did nothing new", at most ``at_most``)."""

    figure: str
    at_least: float | None = None
    at_most: float | None = None

    def describe(self) -> str:
        bound = f">= {self.at_least:g}" if self.at_least is not None else f"<= {self.at_most:g}"
        return f"{self.figure.removeprefix('acted/')} {bound}"

    def holds(self, value: float) -> bool | None:
        if math.isnan(value):
            return None
        if self.at_least is not None and value < self.at_least:
            return False
        return not (self.at_most is not None and value > self.at_most)


def _default_acted() -> dict[str, Acted]:
    return {
        Direction.A1: Acted("acted/a1_residual_ratio", at_least=0.05),
        Direction.A2: Acted("acted/a2_neighbours_changed", at_least=0.05),
        Direction.B1: Acted("acted/b1_neighbours_changed", at_least=0.05),
        Direction.B2: Acted("acted/b2_neighbours_changed", at_least=0.05),
        # attention that ranks entries by age alone is a recency-weighted mean, not retrieval
        Direction.B3: Acted("acted/b3_recency_corr", at_most=0.95),
    }


@dataclass(frozen=True)
class Rules:
    """Thresholds of the rules; defaults are the plan's."""

    min_gain: float = 0.005  # a gain below 0.5 % does not count
    ineffective_run: int = 2  # that many consecutive experiments below min_gain: ineffective
    min_reproductions: int = 2  # further seeds that must each beat the control by min_gain
    selection_seeds: int = 1  # a variant's first seeds, on which the best is chosen
    selection_share: float = 0.2  # no warm-up: select on this share of the test stream
    success_mse: dict[str, float] = field(
        default_factory=lambda: {"ETTm1": 0.700, "Weather": 1.45})
    significance: float = 0.05  # p-value below which a difference counts as significant
    acted: dict[str, Acted] = field(default_factory=_default_acted)


CurveLoader = Callable[[str, str], "np.ndarray | None"]


# ----------------------------------------------------------------------------- scoring


def selection_cut(n: int, rules: Rules) -> int:
    """Windows of a test stream that selection may see when the dataset has no warm-up."""
    return max(1, math.ceil(rules.selection_share * n))


def score_trials(trials: pd.DataFrame, rules: Rules = Rules(),
                 curves: CurveLoader | None = load_losses) -> pd.DataFrame:
    """Valid trials with ``select_mse`` (what choices use), ``mse`` (what verdicts report) and
    ``selected_on`` (``warm-up`` or ``first 20% of test``); ``test_mse`` keeps the whole stream's.

    A dataset warms up when its runs were configured with ``online.warmup``; the others select
    on the first ``selection_share`` of the test stream and report on the rest.
    """
    valid = trials[trials["valid"]].copy()
    valid["test_mse"] = valid["mse"]
    valid["backbone_regime"] = [BackboneRegime.label_of(frozen, lr) for frozen, lr
                                in zip(valid["backbone_frozen"], valid["backbone_online_lr"])]
    warm = valid.get("cfg.online.warmup", pd.Series(True, index=valid.index)).fillna(True)
    stopped = valid["stopped"] if "stopped" in valid else pd.Series(False, index=valid.index)
    valid["stopped"] = stopped.fillna(False).astype(bool)
    select, report, how = [], [], []
    for row, warms in zip(valid.itertuples(), warm.astype(bool)):
        # a trial stopped for futility has scores over part of the stream only: its MSE is not
        # comparable and is not reported; it counts through the gain it had when stopped
        if warms:
            select.append(row.warmup_mse if "warmup_mse" in valid else math.nan)
            report.append(math.nan if row.stopped else row.mse)
            how.append("warm-up")
            continue
        curve = curves(row.trial_path, row.experiment_path) if curves else None
        how.append(f"first {100 * rules.selection_share:g}% of test")
        if curve is None or len(curve) < 2:
            select.append(math.nan)
            report.append(math.nan if row.stopped else row.mse)
            continue
        cut = selection_cut(int(row.stopped_of) if row.stopped else len(curve), rules)
        select.append(float(curve[:cut].mean()))
        report.append(math.nan if row.stopped else float(curve[cut:].mean()))
    valid["select_mse"], valid["mse"], valid["selected_on"] = select, report, how
    return valid


def _scored_losses(row, rules: Rules, curves: CurveLoader) -> np.ndarray | None:
    """The per-window losses a verdict tests: the whole test stream, or the part after the
    selection cut when the dataset selects on the stream."""
    curve = curves(row.trial_path, row.experiment_path)
    if curve is None:
        return None
    return curve if row.selected_on == "warm-up" else curve[selection_cut(len(curve), rules):]


# ----------------------------------------------------------------------------- pairing


PAIR_KEY = ["dataset", "seed", "backbone_key", "backbone_frozen", "backbone_online_lr"]


def paired_gains(scored: pd.DataFrame) -> pd.DataFrame:
    """Non-baseline runs of :func:`score_trials` with ``control_mse``, ``gain``, ``pair_note``.

    Controls pair with themselves (gain 0). A run without its control keeps NaN and says why.
    """
    controls = scored[scored["direction"] == Direction.CONTROL]
    control_mse = controls.groupby(PAIR_KEY, dropna=False)["mse"].mean().rename("control_mse")
    control_sel = (controls.groupby(PAIR_KEY, dropna=False)["select_mse"].mean()
                   .rename("control_select_mse"))
    runs = scored[scored["direction"] != Direction.BASELINE].join(control_mse, on=PAIR_KEY)
    runs = runs.join(control_sel, on=PAIR_KEY)
    runs["gain"] = (runs["control_mse"] - runs["mse"]) / runs["control_mse"]
    # stopped for futility: the gain over the windows it ran (it is below min_gain's bound)
    stopped = runs["stopped"].astype(bool) & runs["control_mse"].notna()
    if stopped.any():
        runs.loc[stopped, "gain"] = runs.loc[stopped, "stopped_gain"]
    runs["select_gain"] = ((runs["control_select_mse"] - runs["select_mse"])
                           / runs["control_select_mse"])
    runs["pair_note"] = [
        "" if not math.isnan(row.control_mse) else _why_unpaired(row, controls)
        for row in runs.itertuples()
    ]
    return runs


def _why_unpaired(row, controls: pd.DataFrame) -> str:
    same = controls[(controls["dataset"] == row.dataset)
                    & (controls["backbone_online_lr"] == row.backbone_online_lr)]
    if same.empty:
        return f"no control run on {row.dataset} with {row.backbone_regime}"
    seeded = same[same["seed"] == row.seed]
    if seeded.empty:
        return f"no control run with seed {row.seed} on {row.dataset}"
    keys = ", ".join(sorted(seeded["backbone_key"].astype(str).unique()))
    return (f"mixed backbone keys: the control (seed {row.seed}) used {keys}, this run "
            f"{row.backbone_key}; not comparable")


# ----------------------------------------------------------------------------- single rules


def ineffective(gains: list[tuple[str, float]], rules: Rules = Rules(),
                inert: frozenset[str] = frozenset()) -> tuple[str, ...] | None:
    """The first ``rules.ineffective_run`` consecutive experiments gaining < min_gain, or None.

    ``gains`` is (experiment name, mean gain) in declared order. An experiment without a gain
    (NaN: no control) breaks a run; an ``inert`` one is skipped: it neither extends nor breaks a
    run, since its mechanism never acted.
    """
    run: list[str] = []
    for name, gain in gains:
        if name in inert:
            continue
        if not math.isnan(gain) and gain < rules.min_gain:
            run.append(name)
            if len(run) >= rules.ineffective_run:
                return tuple(run[-rules.ineffective_run:])
        else:
            run = []
    return None


@dataclass(frozen=True)
class Reproduction:
    seeds: tuple[int, ...]  # reproduction seeds run (after the selection seeds)
    beating: tuple[int, ...]  # those that beat the control by min_gain
    below_threshold: tuple[int, ...]  # those below the dataset's success MSE
    reproduced: bool
    note: str


def reproduction(runs: pd.DataFrame, dataset: str, rules: Rules = Rules()) -> Reproduction:
    """Plan 5.5 "the best must reproduce at least 2 times", read strictly (module docstring).

    ``runs`` are one variant's paired runs on one dataset (``seed``, ``gain``, ``mse``)."""
    runs = runs.sort_values("seed")
    further = runs.iloc[rules.selection_seeds:]
    further = further[further["gain"].notna()]
    seeds = tuple(int(s) for s in further["seed"])
    beating = tuple(int(r.seed) for r in further.itertuples() if r.gain >= rules.min_gain)
    threshold = rules.success_mse.get(dataset)
    below = tuple(int(r.seed) for r in further.itertuples()
                  if threshold is not None and r.mse < threshold)
    losing = [f"seed {int(r.seed)} {100 * r.gain:+.2f}%" for r in further.itertuples()
              if r.gain < rules.min_gain]
    reproduced = len(seeds) >= rules.min_reproductions and len(beating) == len(seeds)
    if losing:
        note = "reproduction lost: " + ", ".join(losing)
    elif len(seeds) < rules.min_reproductions:
        note = (f"{len(seeds)} of {rules.min_reproductions} reproduction seeds run "
                f"(seeds after the first {rules.selection_seeds})")
    else:
        note = ""
    return Reproduction(seeds, beating, below, reproduced, note)


def success(dataset: str, repro: Reproduction, rules: Rules = Rules()) -> bool | None:
    """True when reproduced and every reproduction seed is below the dataset's threshold; None
    when the dataset has no threshold."""
    if rules.success_mse.get(dataset) is None:
        return None
    return bool(repro.reproduced and set(repro.below_threshold) == set(repro.seeds))


# ----------------------------------------------------------------------------- per variant


def variant_table(trials: pd.DataFrame, rules: Rules = Rules(),
                  curves: CurveLoader | None = load_losses) -> pd.DataFrame:
    """One row per (direction, variant, dataset): MSE over seeds, gains, acted, baseline, test.

    ``curves`` loads a trial's per-window losses (significance, and selection where a dataset has
    no warm-up); None skips both.
    """
    # The same cell run in several experiments (a rerun, a copied control): the latest counts.
    cell = ["variant", "dataset", "seed", "backbone_key"]
    trials = trials.sort_values("experiment_index", kind="stable")
    repeated = trials[trials["valid"]].duplicated(cell, keep="last")
    trials = trials.drop(index=repeated[repeated].index)
    scored = score_trials(trials, rules, curves)
    runs = paired_gains(scored)
    baselines = scored[scored["direction"] == Direction.BASELINE]
    selections = selection_runs(trials, rules)
    rows = []
    for (direction, variant, dataset), group in runs.groupby(
            ["direction", "variant", "dataset"], sort=False):
        group = group.sort_values("seed")
        seed_gains = group.set_index("seed")["gain"]
        keys = sorted(group["backbone_key"].astype(str).unique())
        controls = scored[(scored["direction"] == Direction.CONTROL)
                          & (scored["dataset"] == dataset)
                          & (scored["backbone_online_lr"] == group["backbone_online_lr"].iloc[0])
                          & scored["backbone_key"].isin(group["backbone_key"])]
        control_seeds = controls.drop_duplicates("seed")
        best_base = _best_baseline(baselines, selections, dataset, group["backbone_key"],
                                   bool(group["backbone_frozen"].iloc[0]))
        mean_mse = float(group["mse"].mean())
        compared = _mse_on_windows_of(best_base, group, rules, curves)
        selection = group.iloc[: rules.selection_seeds]
        repro = reproduction(group, dataset, rules)
        row = {
            "direction": direction, "variant": variant, "dataset": dataset,
            "order": (int(group["experiment_index"].min()), int(group["variant_order"].min())),
            "backbone_regime": group["backbone_regime"].iloc[0],
            "backbone_keys": ",".join(keys),
            "selected_on": group["selected_on"].iloc[0],
            "select_mse": float(selection["select_mse"].mean()),
            "select_gain": float(selection["select_gain"].mean()),
            "seeds": len(group), "seed_list": ",".join(map(str, group["seed"])),
            "seed_mse": ",".join(f"{m:.4f}" for m in group["mse"]),
            "mse": mean_mse, "mse_std": float(group["mse"].std(ddof=1)) if len(group) > 1
            else math.nan,
            "gain": float(seed_gains.mean()) if seed_gains.notna().any() else math.nan,
            "seed_gains": ",".join("nan" if math.isnan(g) else f"{100 * g:+.2f}%"
                                   for g in seed_gains),
            "reproductions": f"{len(repro.beating)}/{len(repro.seeds)}",
            "reproduced": repro.reproduced, "reproduction_note": repro.note,
            "success": success(dataset, repro, rules),
            "pair_note": "; ".join(sorted({n for n in group["pair_note"] if n})),
            "best_baseline": best_base.name, "baseline_mse": best_base.mse,
            "baseline_candidates": best_base.candidates,
            "baseline_selected_on": best_base.selected_on,
            "gain_vs_baseline": (best_base.mse - compared) / best_base.mse
            if not math.isnan(best_base.mse) else math.nan,
            "control_seeds": len(control_seeds),
            "noise_floor": noise_floor(control_seeds["mse"]),
            "ms_per_step": float(group["ms_per_step"].mean()),
            "stopped": _stopped_text(group),
        }
        row.update(_acted(direction, group, rules))
        # a difference either way that the control's own seed spread could explain
        row["below_noise"] = (bool(abs(row["gain"]) < row["noise_floor"])
                              if not (math.isnan(row["gain"]) or math.isnan(row["noise_floor"]))
                              else None)
        row.update(_significance(group, controls, curves, rules)
                   if direction != Direction.CONTROL and curves
                   else {"p_value": math.nan, "seed_p": "", "p_note": ""})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        raise AnalysisError("no valid non-baseline run to judge (every trial failed, or the "
                            "experiments hold baselines only)")
    return table.sort_values("order", kind="stable").reset_index(drop=True)


def _stopped_text(group: pd.DataFrame) -> str:
    """Where futility stopping ended the variant's runs, e.g. ``stopped at 10777 of 43105
    windows, gain -0.02%, bound +0.31%`` (per seed when several were stopped)."""
    stopped = group[group["stopped"]]
    parts = [f"stopped at {int(r.stopped_window)} of {int(r.stopped_of)} windows, gain "
             f"{100 * r.stopped_gain:+.2f}%, bound {100 * r.stopped_bound:+.2f}%"
             for r in stopped.itertuples()]
    if len(group) > 1 and parts:
        parts = [f"seed {int(r.seed)} {p}" for r, p in zip(stopped.itertuples(), parts)]
    return "; ".join(parts)


def _acted(direction: str, group: pd.DataFrame, rules: Rules) -> dict:
    """``acted`` (the probe figure of the direction, mean over seeds) and ``inert``."""
    rule = rules.acted.get(direction)
    if rule is None:
        return {"acted": math.nan, "acted_rule": "", "inert": False}
    value = float(group[rule.figure].mean()) if rule.figure in group else math.nan
    holds = rule.holds(value)
    return {"acted": value, "acted_rule": rule.describe(), "inert": holds is False}


def selection_runs(trials: pd.DataFrame, rules: Rules = Rules()) -> pd.DataFrame:
    """Baseline runs that streamed only what a choice needs (a campaign's S0-select: the warm-up,
    or the first ``selection_share`` of the test stream), with their ``select_mse``.

    They hold no result, so they never reach a verdict's figures; they are the candidates the
    baseline was chosen among, and a verdict that names the choice must count them."""
    if "selection_only" not in trials:
        return trials.iloc[:0].assign(select_mse=pd.Series(dtype=float))
    part = (trials["status"] == "TERMINATED") & (trials["direction"] == Direction.BASELINE) & (
        trials["selection_only"].fillna(False).astype(bool))
    runs = trials[part].copy()
    warms = runs["cfg.online.warmup"].fillna(True).astype(bool)
    # a warm-up chooses on validation; otherwise the run streamed the selection share itself
    same_share = (runs["cfg.online.test_share"] - rules.selection_share).abs() < 1e-9
    runs["select_mse"] = runs["warmup_mse"].where(warms, runs["mse"].where(same_share))
    return runs[runs["select_mse"].notna()]


class Baseline(NamedTuple):
    """The strongest CHRC-free baseline of a verdict, as :func:`_best_baseline` chose it."""

    name: str  # "" when there is none
    mse: float  # its reported MSE; NaN when it never ran whole
    candidates: int  # how many it was chosen among (one: nothing was chosen)
    selected_on: str  # what its reported MSE leaves out: "warm-up" (nothing) or the first 20 %


NO_BASELINE = Baseline("", math.nan, 0, "")


def _best_baseline(baselines: pd.DataFrame, selections: pd.DataFrame, dataset: str,
                   keys: pd.Series, frozen: bool) -> Baseline:
    """The CHRC-free variant of the same backbone regime (frozen, or learning online) with the
    lowest validation (selection) MSE, its reported MSE (NaN when it never ran whole), and how
    many it was chosen among: the whole runs and the selection-only runs (one: nothing was
    chosen, which the verdict then says).

    The regimes are not candidates for each other: the validation month right after pretraining
    favours a backbone that does not learn (on ETTm1 the frozen one has the lowest validation
    MSE of all, 0.3316, and a test MSE 20 % above slow fine-tuning's), so one choice across
    regimes would pit the learning control against its weakest baseline. Within a regime the
    choice is the online learning rate, which validation does inform."""
    def same(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[(frame["dataset"] == dataset) & frame["backbone_key"].isin(keys)
                     & (frame["backbone_frozen"] == frozen)]

    runs = same(baselines).groupby("variant", sort=False)
    whole = runs[["select_mse", "mse"]].mean().join(runs["selected_on"].first())
    whole = whole[whole["select_mse"].notna()]
    chosen_on = same(selections).groupby("variant", sort=False)["select_mse"].mean()
    candidates = pd.concat([whole["select_mse"], chosen_on[~chosen_on.index.isin(whole.index)]])
    if candidates.empty:
        return NO_BASELINE
    best = candidates.idxmin()
    if best not in whole.index:
        return Baseline(str(best), math.nan, len(candidates), "")
    return Baseline(str(best), float(whole.loc[best, "mse"]), len(candidates),
                    str(whole.loc[best, "selected_on"]))


def _mse_on_windows_of(baseline: Baseline, group: pd.DataFrame, rules: Rules,
                       curves: CurveLoader | None) -> float:
    """The group's mean MSE over the windows the baseline's MSE covers, so that the gain
    between them compares the same stretch of the stream.

    A run that warmed up on validation reports the whole test stream; a baseline of a dataset
    without warm-up (Weather's) reports only what follows the selection cut. A warmed-up run
    there (a control tuned on validation) is then scored after the same cut. Any other mismatch
    has no common windows to compare on: NaN."""
    if not baseline.selected_on or (group["selected_on"] == baseline.selected_on).all():
        return float(group["mse"].mean())
    if curves is None or not (group["selected_on"] == "warm-up").all():
        return math.nan
    after_cut = []
    for row in group.itertuples():
        curve = curves(row.trial_path, row.experiment_path)
        if curve is None or row.stopped:
            return math.nan
        after_cut.append(float(curve[selection_cut(len(curve), rules):].mean()))
    return float(np.mean(after_cut))


def _significance(group: pd.DataFrame, controls: pd.DataFrame, curves: CurveLoader,
                  rules: Rules) -> dict:
    """Per-seed tests of the variant against the control of the same seed, combined."""
    by_seed = {row.seed: row for row in controls.drop_duplicates("seed").itertuples()}
    horizon = int(group["cfg.data.horizon"].iloc[0]) if "cfg.data.horizon" in group else 1
    tests, notes = [], []
    for row in group.drop_duplicates("seed").itertuples():
        if row.seed not in by_seed:
            continue
        if row.stopped:
            notes.append(f"seed {row.seed}: stopped early, not tested")
            continue
        mine = _scored_losses(row, rules, curves)
        theirs = _scored_losses(by_seed[row.seed], rules, curves)
        if mine is None or theirs is None or len(mine) != len(theirs):
            notes.append(f"seed {row.seed}: per-window losses missing or of different lengths")
            continue
        try:
            tests.append(loss_difference_test(mine, theirs, horizon))
        except ValueError as err:
            notes.append(f"seed {row.seed}: {err}")
    if not tests:
        return {"p_value": math.nan, "seed_p": "",
                "p_note": "; ".join(notes) or "no paired control"}
    combined = combine_seeds(tests)
    return {"p_value": combined.p_value,
            "seed_p": ",".join(f"{p:.2g}" for p in combined.seed_p_values),
            "p_note": "; ".join(notes) + ("" if combined.agree else
                                          "seeds disagree on the sign")}


# ----------------------------------------------------------------------------- verdicts


def verdicts(variants: pd.DataFrame, rules: Rules = Rules()) -> pd.DataFrame:
    """One verdict per (direction, dataset), and one per control, from :func:`variant_table`.

    The best variant is the one with the lowest validation (selection) MSE, never the lowest
    test MSE."""
    rows = []
    # each control (one per backbone regime, e.g. p2p7p8 and p2p7p8_frozen) is its own row:
    # they are the references of different regimes, not alternatives to choose between
    judged_as = variants["variant"].where(variants["direction"] == Direction.CONTROL, "")
    for (direction, dataset, _), group in variants.groupby(
            [variants["direction"], variants["dataset"], judged_as], sort=False):
        group = group.sort_values("order", kind="stable")
        judged = group[group["gain"].notna()]
        inert = frozenset(group.loc[group["inert"], "variant"])
        pair = (ineffective(list(zip(group["variant"], group["gain"])), rules, inert)
                if direction != Direction.CONTROL else None)  # the control gains 0 by definition
        row = {"direction": direction, "dataset": dataset, "experiments": len(group),
               "ineffective": pair is not None,
               "ineffective_pair": " -> ".join(pair) if pair else "",
               "inert_variants": ",".join(sorted(inert))}
        if judged.empty:
            notes = "; ".join(sorted({n for n in group["pair_note"] if n}))
            rows.append({**row, "best_variant": "", "mse": math.nan, "gain": math.nan,
                         "inert": False, "verdict": f"no verdict: {notes or 'no paired run'}"})
            continue
        notes = []
        selectable = judged[judged["select_mse"].notna()]
        if selectable.empty:
            selectable = judged
            notes.append("no validation MSE: best chosen by declared order")
            best = selectable.iloc[0]
        else:
            best_sel = selectable["select_mse"].min()
            ties = selectable[selectable["select_mse"] == best_sel]
            best = ties.iloc[0]
            if len(ties) > 1:
                notes.append(f"tie on validation with {', '.join(ties['variant'].iloc[1:])}")
        if len(judged) < len(group):
            notes.append("unpaired: " + ", ".join(group.loc[group["gain"].isna(), "variant"]))
        # a reproduction is moot for the control (not against itself) and for a best variant
        # stopped for futility (its gains cover part of the stream, and it gained too little)
        if best["reproduction_note"] and direction != Direction.CONTROL and not best["stopped"]:
            notes.append(best["reproduction_note"])
        if 0 < best["control_seeds"] < MIN_NOISE_SEEDS:
            notes.append(f"noise floor unknown: {int(best['control_seeds'])} control seed(s), "
                         f"it needs {MIN_NOISE_SEEDS}")
        row.update({
            "best_variant": best["variant"], "selected_on": best["selected_on"],
            "select_mse": float(best["select_mse"]), "mse": float(best["mse"]),
            "seeds": int(best["seeds"]), "seed_mse": best["seed_mse"],
            "gain": float(best["gain"]), "seed_gains": best["seed_gains"],
            "reproduced": bool(best["reproduced"]), "reproductions": best["reproductions"],
            "best_baseline": best["best_baseline"],
            "baseline_candidates": int(best["baseline_candidates"]),
            "baseline_selected_on": best["baseline_selected_on"],
            "gain_vs_baseline": float(best["gain_vs_baseline"]),
            "noise_floor": float(best["noise_floor"]), "below_noise": best["below_noise"],
            "p_value": float(best["p_value"]), "success": best["success"],
            "acted": float(best["acted"]), "acted_rule": best["acted_rule"],
            "inert": bool(group["inert"].all()), "stopped": best["stopped"],
        })
        if direction == Direction.CONTROL:  # judged against baselines only
            row.update({"reproduced": None, "reproductions": "", "success": None})
        row["verdict"] = _verdict_text(row, rules, direction)
        row["notes"] = "; ".join(notes)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["_o"] = table["direction"].map(_direction_order)
    return table.sort_values(["_o", "dataset"], kind="stable").drop(columns="_o").reset_index(
        drop=True)


def _direction_order(label: str) -> int:
    """Plan 5.2's order; a label this version does not know sorts last."""
    try:
        return Direction(label).order
    except ValueError:
        return len(Direction)


def _selection_words(selected_on: str) -> str:
    """'validation (warm-up)' or the share of the test stream a dataset without one chose on."""
    return "validation (warm-up)" if selected_on == "warm-up" else f"the {selected_on}"


def _verdict_text(row: dict, rules: Rules, direction: str) -> str:
    pct = rules.min_gain * 100
    if direction == Direction.CONTROL:
        base = row["gain_vs_baseline"]
        if math.isnan(base) and row["best_baseline"]:
            return (f"control (the best CHRC-free baseline of its regime on "
                    f"{_selection_words(row['selected_on'])}, {row['best_baseline']}, has no "
                    "whole run to compare with)")
        if math.isnan(base):
            return "control (no CHRC-free baseline to compare with)"
        chosen_on = row["baseline_selected_on"]
        if row["baseline_candidates"] == 1:
            how = "the only one of its backbone regime"
        else:
            how = (f"chosen among {row['baseline_candidates']} of its backbone regime on "
                   f"{_selection_words(chosen_on)}")
        if chosen_on != row["selected_on"]:  # see _mse_on_windows_of
            how += f"; both scored on the test windows after its {chosen_on}"
        return (f"control: {100 * base:+.2f}% vs the best CHRC-free baseline "
                f"({row['best_baseline']}, {how})")
    parts = []
    if row["inert"]:
        parts.append(f"inert: its mechanism did not act ({row['acted_rule']} not met, got "
                     f"{row['acted']:.3g}); no verdict on the idea")
    elif row["ineffective"]:
        parts.append(f"ineffective ({row['ineffective_pair']} each gain < {pct:g}%)")
    if row["success"]:
        parts.append(f"success: reproduced on seeds each below "
                     f"{rules.success_mse[row['dataset']]:g}")
    elif row["reproduced"]:
        parts.append(f"reproduced gain {100 * row['gain']:+.2f}%")
    elif row["gain"] >= rules.min_gain:
        parts.append(f"needs reproduction ({row['reproductions']} reproduction seeds beat the "
                     f"control by >= {pct:g}%)")
    elif row.get("stopped"):
        if row["inert"]:  # the form that ran was futile; the idea itself got no verdict
            parts.append(f"futile as run ({row['stopped']})")
        elif row["ineffective"]:  # one clause: the pair, then where it stopped
            parts[-1] = f"{parts[-1][:-1]}; {row['stopped']})"
        else:
            parts.append(f"ineffective ({row['stopped']})")
    elif row["gain"] < 0 and row["p_value"] < rules.significance:
        parts.append(f"worse than the control ({100 * row['gain']:+.2f}%, "
                     f"p = {row['p_value']:.2g})")
    elif not row["inert"]:
        parts.append(f"no gain ({100 * row['gain']:+.2f}%)")
    if row["below_noise"]:
        parts.append("within the control's seed noise")
    if not math.isnan(row["gain_vs_baseline"]) and row["gain_vs_baseline"] < rules.min_gain:
        parts.append(f"not better than {row['best_baseline']} by {pct:g}%")
    if not math.isnan(row["p_value"]) and row["p_value"] >= rules.significance:
        parts.append(f"p = {row['p_value']:.2f}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- gates


@dataclass(frozen=True)
class Gate:
    open: bool
    reason: str
    variants: tuple[str, ...] = ()


def a2_gate(verdict_table: pd.DataFrame, dataset: str, rules: Rules = Rules()) -> Gate:
    """Plan 5.2: A2 is worth running only if A1 showed a gain on this dataset. An inert A1 is
    no evidence either way, so it leaves the gate open."""
    a1 = verdict_table[(verdict_table["direction"] == Direction.A1)
                       & (verdict_table["dataset"] == dataset)]
    if a1.empty or math.isnan(a1["gain"].iloc[0]):
        return Gate(False, f"A1 has no judged run on {dataset}")
    row = a1.iloc[0]
    if row["inert"]:
        return Gate(True, f"A1 was inert on {dataset} ({row['acted_rule']} not met): an inert "
                          f"direction closes no gate")
    if row["ineffective"]:
        return Gate(False, f"A1 is ineffective on {dataset} ({row['ineffective_pair']})")
    if row["gain"] < rules.min_gain:
        return Gate(False, f"A1's best ({row['best_variant']}) gained {100 * row['gain']:+.2f}% "
                           f"< {100 * rules.min_gain:g}% on {dataset}")
    return Gate(True, f"A1's best ({row['best_variant']}) gained {100 * row['gain']:+.2f}% on "
                      f"{dataset}", (row["best_variant"],))


def s3_pair(variant_rows: pd.DataFrame, dataset: str, rules: Rules = Rules()) -> Gate:
    """Plan 5.2 / S3: the best A variant and the best B variant (each chosen on validation
    MSE among the variants that gained)."""
    chosen, missing = [], []
    for family in ("A", "B"):
        rows = variant_rows[variant_rows["direction"].isin(Direction.in_family(family))
                            & (variant_rows["dataset"] == dataset)
                            & (variant_rows["gain"] >= rules.min_gain)]
        if rows.empty:
            missing.append(family)
        else:
            chosen.append(rows.sort_values(["select_mse", "order"], na_position="last")
                          .iloc[0]["variant"])
    if missing:
        return Gate(False, f"no {' or '.join(missing)} variant gained >= "
                           f"{100 * rules.min_gain:g}% on {dataset}")
    return Gate(True, f"best A {chosen[0]} + best B {chosen[1]} on {dataset}", tuple(chosen))
