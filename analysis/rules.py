"""The plan's rules (section 5 of the H-Mem 2.1 plan) as functions of the trials table.

The thresholds live in one typed object, :class:`Rules`, with the plan's defaults:

- a run's **paired gain** is ``(mse_control - mse_variant) / mse_control`` against the control
  run of the same dataset, seed, backbone key *and backbone regime* (a frozen-backbone variant
  is paired with the frozen-backbone control, ``p2p7p8_frozen``; the others with ``p2p7p8``);
- a direction is **ineffective** on a dataset when two consecutive experiments of it (in the
  order the search spaces declare them) gain less than ``min_gain`` (0.5 %);
- a best variant is **reproduced** when at least ``min_reproductions`` (2) runs with different
  seeds each beat their control by ``min_gain``; otherwise it "needs reproduction";
- **success** is a reproduced variant below the dataset's MSE threshold (ETTm1 0.700,
  Weather 1.45);
- the **gates** of plan 5.2: A2 only if A1 gained; S3 combines the best A with the best B.

Beyond the plan, every verdict shows the gain over the **strongest simple baseline** (the best
CHRC-free run on the same dataset and backbone, e.g. ``online_slow``), a Diebold-Mariano p-value
against the control, and whether the gain is below the control's seed-to-seed **noise floor**.
A missing control, a single seed, ties, NaN metrics and mixed backbone keys each produce a
stated verdict, never a silent number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.loading import AnalysisError, load_losses
from analysis.significance import diebold_mariano, noise_floor

#: Directions judged by the rules, in the plan's order.
DIRECTIONS = ["control", "A1", "A2", "B1", "B2", "B3", "S3"]
A_DIRECTIONS, B_DIRECTIONS = ("A1", "A2"), ("B1", "B2", "B3")


@dataclass(frozen=True)
class Rules:
    """Thresholds of the rules; defaults are the plan's."""

    min_gain: float = 0.005  # a gain below 0.5 % does not count
    ineffective_run: int = 2  # that many consecutive experiments below min_gain: ineffective
    min_reproductions: int = 2  # seeds that must each beat the control by min_gain
    success_mse: dict[str, float] = field(
        default_factory=lambda: {"ETTm1": 0.700, "Weather": 1.45})
    significance: float = 0.05  # DM p-value below which a difference counts as significant


def backbone_regime(regime: str | None) -> str | None:
    """``"backbone=online@1e-06 chrc=on"`` -> ``"backbone=online@1e-06"``."""
    return regime.split(" ")[0] if isinstance(regime, str) else None


# ----------------------------------------------------------------------------- pairing


def paired_gains(trials: pd.DataFrame) -> pd.DataFrame:
    """Valid non-baseline runs with ``control_mse``, ``gain`` and ``pair_note``.

    Controls pair with themselves (gain 0). A run without its control keeps NaN and says why.
    """
    valid = trials[trials["valid"]].copy()
    valid["backbone_regime"] = valid["regime"].map(backbone_regime)
    controls = valid[valid["direction"] == "control"]
    key = ["dataset", "seed", "backbone_key", "backbone_regime"]
    control_mse = controls.groupby(key, dropna=False)["mse"].mean().rename("control_mse")
    runs = valid[valid["direction"] != "baseline"].join(control_mse, on=key)
    runs["gain"] = (runs["control_mse"] - runs["mse"]) / runs["control_mse"]
    runs["pair_note"] = [
        "" if not math.isnan(row.control_mse) else _why_unpaired(row, controls)
        for row in runs.itertuples()
    ]
    return runs


def _why_unpaired(row, controls: pd.DataFrame) -> str:
    same = controls[(controls["dataset"] == row.dataset)
                    & (controls["backbone_regime"] == row.backbone_regime)]
    if same.empty:
        return f"no control run on {row.dataset} with {row.backbone_regime}"
    seeded = same[same["seed"] == row.seed]
    if seeded.empty:
        return f"no control run with seed {row.seed} on {row.dataset}"
    keys = ", ".join(sorted(seeded["backbone_key"].astype(str).unique()))
    return (f"mixed backbone keys: the control (seed {row.seed}) used {keys}, this run "
            f"{row.backbone_key}; not comparable")


# ----------------------------------------------------------------------------- single rules


def ineffective(gains: list[tuple[str, float]], rules: Rules = Rules()) -> tuple[str, ...] | None:
    """The first ``rules.ineffective_run`` consecutive experiments gaining < min_gain, or None.

    ``gains`` is (experiment name, mean gain) in declared order; an experiment without a gain
    (NaN: no control) breaks a run rather than extending it.
    """
    run: list[str] = []
    for name, gain in gains:
        if not math.isnan(gain) and gain < rules.min_gain:
            run.append(name)
            if len(run) >= rules.ineffective_run:
                return tuple(run[-rules.ineffective_run:])
        else:
            run = []
    return None


def reproductions(seed_gains: pd.Series, rules: Rules = Rules()) -> int:
    """How many distinct seeds beat their control by at least ``min_gain``."""
    beating = seed_gains[seed_gains >= rules.min_gain]
    return int(beating.index.nunique())


def success(dataset: str, mse: float, reproduced: bool, rules: Rules = Rules()) -> bool | None:
    """True / False against the dataset's threshold; None when the dataset has none."""
    threshold = rules.success_mse.get(dataset)
    if threshold is None or math.isnan(mse):
        return None
    return bool(reproduced and mse < threshold)


# ----------------------------------------------------------------------------- per variant


CurveLoader = Callable[[str, str], "np.ndarray | None"]


def variant_table(trials: pd.DataFrame, rules: Rules = Rules(),
                  curves: CurveLoader | None = load_losses) -> pd.DataFrame:
    """One row per (direction, variant, dataset): MSE over seeds, gains, baseline, DM, noise.

    ``curves`` loads a trial's per-window losses for the Diebold-Mariano test; None skips it.
    """
    # The same cell run in several experiments (a rerun, a copied control): the latest counts.
    cell = ["variant", "dataset", "seed", "backbone_key"]
    trials = trials.sort_values("experiment_index", kind="stable")
    repeated = trials[trials["valid"]].duplicated(cell, keep="last")
    trials = trials.drop(index=repeated[repeated].index)
    runs = paired_gains(trials)
    valid = trials[trials["valid"]].copy()
    valid["backbone_regime"] = valid["regime"].map(backbone_regime)
    baselines = valid[valid["direction"] == "baseline"]
    rows = []
    for (direction, variant, dataset), group in runs.groupby(
            ["direction", "variant", "dataset"], sort=False):
        group = group.sort_values("seed")
        seed_gains = group.set_index("seed")["gain"]
        mean_mse = float(group["mse"].mean())
        keys = sorted(group["backbone_key"].astype(str).unique())
        regime = group["backbone_regime"].iloc[0]
        controls = valid[(valid["direction"] == "control") & (valid["dataset"] == dataset)
                         & (valid["backbone_regime"] == regime)
                         & valid["backbone_key"].isin(group["backbone_key"])]
        best_base = _best_baseline(baselines, dataset, group["backbone_key"])
        row = {
            "direction": direction, "variant": variant, "dataset": dataset,
            "order": (int(group["experiment_index"].min()), int(group["variant_order"].min())),
            "backbone_regime": regime, "backbone_keys": ",".join(keys),
            "seeds": len(group), "seed_list": ",".join(map(str, group["seed"])),
            "seed_mse": ",".join(f"{m:.4f}" for m in group["mse"]),
            "mse": mean_mse, "mse_std": float(group["mse"].std(ddof=1)) if len(group) > 1
            else math.nan,
            "gain": float(seed_gains.mean()) if seed_gains.notna().any() else math.nan,
            "seed_gains": ",".join("nan" if math.isnan(g) else f"{100 * g:+.2f}%"
                                   for g in seed_gains),
            "reproductions": reproductions(seed_gains.dropna(), rules),
            "pair_note": "; ".join(sorted({n for n in group["pair_note"] if n})),
            "best_baseline": best_base[0], "baseline_mse": best_base[1],
            "gain_vs_baseline": (best_base[1] - mean_mse) / best_base[1]
            if not math.isnan(best_base[1]) else math.nan,
            "noise_floor": noise_floor(controls.drop_duplicates("seed")["mse"]),
            "ms_per_step": float(group["ms_per_step"].mean()),
        }
        row["reproduced"] = row["reproductions"] >= rules.min_reproductions
        # a difference either way that the control's own seed spread could explain
        row["below_noise"] = (bool(abs(row["gain"]) < row["noise_floor"])
                              if not (math.isnan(row["gain"]) or math.isnan(row["noise_floor"]))
                              else None)
        row.update(_dm(group, controls, curves, trials) if direction != "control" and curves
                   else {"dm_statistic": math.nan, "dm_p": math.nan, "dm_note": ""})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        raise AnalysisError("no valid non-baseline run to judge (every trial failed, or the "
                            "experiments hold baselines only)")
    return table.sort_values("order", kind="stable").reset_index(drop=True)


def _best_baseline(baselines: pd.DataFrame, dataset: str, keys: pd.Series) -> tuple[str, float]:
    same = baselines[(baselines["dataset"] == dataset) & baselines["backbone_key"].isin(keys)]
    if same.empty:
        return "", math.nan
    means = same.groupby("variant", sort=False)["mse"].mean()
    return str(means.idxmin()), float(means.min())


def _dm(group: pd.DataFrame, controls: pd.DataFrame, curves: CurveLoader,
        trials: pd.DataFrame) -> dict:
    """DM of the seed-averaged per-window loss of a variant against its control's."""
    seeds = sorted(set(group["seed"]) & set(controls["seed"]))
    if not seeds:
        return {"dm_statistic": math.nan, "dm_p": math.nan, "dm_note": "no paired control"}

    def mean_curve(rows: pd.DataFrame) -> np.ndarray | None:
        losses = []
        for row in rows.drop_duplicates("seed").itertuples():
            curve = curves(row.trial_path, row.experiment_path)
            if curve is None:
                return None
            losses.append(curve)
        lengths = {len(loss) for loss in losses}
        return np.mean(losses, axis=0) if len(lengths) == 1 else None

    variant = mean_curve(group[group["seed"].isin(seeds)])
    control = mean_curve(controls[controls["seed"].isin(seeds)])
    if variant is None or control is None or len(variant) != len(control):
        return {"dm_statistic": math.nan, "dm_p": math.nan,
                "dm_note": "per-window losses missing or of different lengths"}
    horizon = int(group["cfg.data.horizon"].iloc[0]) if "cfg.data.horizon" in group else 1
    try:
        result = diebold_mariano(variant, control, horizon)
    except ValueError as err:
        return {"dm_statistic": math.nan, "dm_p": math.nan, "dm_note": str(err)}
    return {"dm_statistic": result.statistic, "dm_p": result.p_value, "dm_note": ""}


# ----------------------------------------------------------------------------- verdicts


def verdicts(variants: pd.DataFrame, rules: Rules = Rules()) -> pd.DataFrame:
    """One verdict per (direction, dataset), from :func:`variant_table`'s rows."""
    rows = []
    for (direction, dataset), group in variants.groupby(["direction", "dataset"], sort=False):
        group = group.sort_values("order", kind="stable")
        judged = group[group["gain"].notna()]
        pair = (ineffective(list(zip(group["variant"], group["gain"])), rules)
                if direction != "control" else None)  # the control gains 0 by definition
        row = {"direction": direction, "dataset": dataset, "experiments": len(group),
               "ineffective": pair is not None,
               "ineffective_pair": " -> ".join(pair) if pair else ""}
        if judged.empty:
            notes = "; ".join(sorted({n for n in group["pair_note"] if n}))
            rows.append({**row, "best_variant": "", "mse": math.nan, "gain": math.nan,
                         "verdict": f"no verdict: {notes or 'no paired run'}"})
            continue
        best_mse = judged["mse"].min()
        ties = judged[judged["mse"] == best_mse]
        best = ties.iloc[0]
        notes = []
        if len(ties) > 1:
            notes.append(f"tie with {', '.join(ties['variant'].iloc[1:])}")
        if len(judged) < len(group):
            notes.append("unpaired: " + ", ".join(group.loc[group["gain"].isna(), "variant"]))
        reproduced = bool(best["reproduced"])
        won = success(dataset, float(best["mse"]), reproduced, rules)
        row.update({
            "best_variant": best["variant"], "mse": float(best["mse"]),
            "seeds": int(best["seeds"]), "seed_mse": best["seed_mse"],
            "gain": float(best["gain"]), "seed_gains": best["seed_gains"],
            "reproduced": reproduced,
            "reproductions": f"{int(best['reproductions'])}/{int(best['seeds'])}",
            "best_baseline": best["best_baseline"],
            "gain_vs_baseline": float(best["gain_vs_baseline"]),
            "noise_floor": float(best["noise_floor"]), "below_noise": best["below_noise"],
            "dm_p": float(best["dm_p"]), "success": won,
        })
        if direction == "control":  # judged against baselines only
            row.update({"reproduced": None, "reproductions": "", "success": None})
        row["verdict"] = _verdict_text(row, best, rules, direction)
        row["notes"] = "; ".join(notes)
        rows.append(row)
    table = pd.DataFrame(rows)
    order = {d: i for i, d in enumerate(DIRECTIONS)}
    table["_o"] = table["direction"].map(lambda d: order.get(d, len(order)))
    return table.sort_values(["_o", "dataset"], kind="stable").drop(columns="_o").reset_index(
        drop=True)


def _verdict_text(row: dict, best: pd.Series, rules: Rules, direction: str) -> str:
    pct = rules.min_gain * 100
    if direction == "control":
        base = row["gain_vs_baseline"]
        if math.isnan(base):
            return "control (no CHRC-free baseline to compare with)"
        return (f"control: {100 * base:+.2f}% vs the best CHRC-free baseline "
                f"({row['best_baseline']})")
    parts = []
    if row["ineffective"]:
        parts.append(f"ineffective ({row['ineffective_pair']} each gain < {pct:g}%)")
    if row["success"]:
        parts.append(f"success: reproduced, MSE {row['mse']:.4f} < "
                     f"{rules.success_mse[row['dataset']]:g}")
    elif row["reproduced"]:
        parts.append(f"reproduced gain {100 * row['gain']:+.2f}%")
    elif row["gain"] >= rules.min_gain:
        parts.append(f"needs reproduction ({row['reproductions']} seeds beat the control by "
                     f">= {pct:g}%)")
    elif row["gain"] < 0 and row["dm_p"] < rules.significance:
        parts.append(f"worse than the control ({100 * row['gain']:+.2f}%, "
                     f"DM p = {row['dm_p']:.2g})")
    else:
        parts.append(f"no gain ({100 * row['gain']:+.2f}%)")
    if row["below_noise"]:
        parts.append("within the control's seed noise")
    if not math.isnan(row["gain_vs_baseline"]) and row["gain_vs_baseline"] < rules.min_gain:
        parts.append(f"not better than {row['best_baseline']} by {pct:g}%")
    if not math.isnan(row["dm_p"]) and row["dm_p"] >= rules.significance:
        parts.append(f"DM p = {row['dm_p']:.2f}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- gates


@dataclass(frozen=True)
class Gate:
    open: bool
    reason: str
    variants: tuple[str, ...] = ()


def a2_gate(verdict_table: pd.DataFrame, dataset: str, rules: Rules = Rules()) -> Gate:
    """Plan 5.2: A2 is worth running only if A1 showed a gain on this dataset."""
    a1 = verdict_table[(verdict_table["direction"] == "A1")
                       & (verdict_table["dataset"] == dataset)]
    if a1.empty or math.isnan(a1["gain"].iloc[0]):
        return Gate(False, f"A1 has no judged run on {dataset}")
    row = a1.iloc[0]
    if row["ineffective"]:
        return Gate(False, f"A1 is ineffective on {dataset} ({row['ineffective_pair']})")
    if row["gain"] < rules.min_gain:
        return Gate(False, f"A1's best ({row['best_variant']}) gained {100 * row['gain']:+.2f}% "
                           f"< {100 * rules.min_gain:g}% on {dataset}")
    return Gate(True, f"A1's best ({row['best_variant']}) gained {100 * row['gain']:+.2f}% on "
                      f"{dataset}", (row["best_variant"],))


def s3_pair(variant_rows: pd.DataFrame, dataset: str, rules: Rules = Rules()) -> Gate:
    """Plan 5.2 / S3: the best A variant and the best B variant, each with a gain."""
    chosen, missing = [], []
    for family, directions in (("A", A_DIRECTIONS), ("B", B_DIRECTIONS)):
        rows = variant_rows[variant_rows["direction"].isin(directions)
                            & (variant_rows["dataset"] == dataset)
                            & (variant_rows["gain"] >= rules.min_gain)]
        if rows.empty:
            missing.append(family)
        else:
            chosen.append(rows.sort_values(["gain", "order"], ascending=[False, True])
                          .iloc[0]["variant"])
    if missing:
        return Gate(False, f"no {' or '.join(missing)} variant gained >= "
                           f"{100 * rules.min_gain:g}% on {dataset}")
    return Gate(True, f"best A {chosen[0]} + best B {chosen[1]} on {dataset}", tuple(chosen))
