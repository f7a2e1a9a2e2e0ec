"""What a set of experiments cost, in trial-hours, and what it would have cost without stopping.

A trial-hour is one trial running for an hour (its ``seconds_total``: set-up, warm-up and test
stream, the cores it was given); it is the unit in which a campaign is compared with the
exhaustive grid. A run stopped for futility, or a selection run that streamed part of the data,
is also costed as if it had run to the end (its seconds scaled by the windows it skipped), so that
the saving is visible and the grid's estimate is not taken from partial runs.
"""

from __future__ import annotations

import pandas as pd


def _full_stream_seconds(done: pd.DataFrame) -> pd.Series:
    """Seconds each run would have taken had it streamed every window: its wall time scaled by
    the windows of a full run (warm-up and the whole test stream) over the windows it ran.

    That costs a run stopped for futility to the end, and so too a selection run that streamed
    only the warm-up or the first share of the test (``online.test_stream: false``,
    ``online.test_share``). A dataset's test length is the longest any of its runs streamed or
    was stopped out of. Set-up is scaled with the rest, which errs on the dear side."""
    windows = done["steps"].fillna(0)
    of = done["stopped_of"].where(done["stopped"]).fillna(0)
    test = pd.concat([windows, of], axis=1).max(axis=1).groupby(done["dataset"]).transform("max")
    warmup = done["warmup_steps"].fillna(0) if "warmup_steps" in done else 0.0
    ran = warmup + windows
    return (done["wall_s"] * (warmup + test) / ran.where(ran > 0)).astype(float)


def trial_hours(trials: pd.DataFrame) -> float:
    """Trial-hours the runs with results used (a run that never started costs nothing)."""
    return float(trials["wall_s"].sum()) / 3600.0


def compute_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per experiment (and in total): runs with results, runs stopped for futility, the
    trial-hours used, and the trial-hours the same runs would have taken to the end."""
    done = trials[trials["wall_s"].notna()].copy()
    if done.empty:
        return pd.DataFrame(columns=["experiment", "runs", "stopped", "trial_hours",
                                     "without_stopping"])
    if "stopped" not in done:
        done["stopped"] = False
    done["full_s"] = _full_stream_seconds(done)
    table = done.groupby("experiment", sort=False).agg(
        runs=("wall_s", "size"), stopped=("stopped", "sum"), trial_hours=("wall_s", "sum"),
        without_stopping=("full_s", "sum")).reset_index()
    table[["trial_hours", "without_stopping"]] /= 3600.0
    total = {"experiment": "total", "runs": int(table["runs"].sum()),
             "stopped": int(table["stopped"].sum()),
             "trial_hours": float(table["trial_hours"].sum()),
             "without_stopping": float(table["without_stopping"].sum())}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def exhaustive_hours(trials: pd.DataFrame, cells: pd.DataFrame) -> tuple[float, int]:
    """Estimated trial-hours of running every cell (``variant``, ``dataset``, ``frozen``,
    ``chrc``: one row per variant x dataset x seed of a space's grid) to the end, and how many
    cells had no estimate.

    A cell costs what its variant cost on that dataset here (a stopped run scaled to the end);
    a variant that never ran costs the mean of the runs on the dataset with the same backbone
    regime (frozen or learning) and CHRC on or off, which is what sets a run's cost.
    """
    done = trials[trials["wall_s"].notna()].copy()
    if "stopped" not in done:
        done["stopped"] = False
    done["full_s"] = _full_stream_seconds(done)
    done = done[done["full_s"].notna()]  # a run that streamed nothing says nothing of its cost
    done["chrc"] = done["direction"] != "baseline"
    by_variant = done.groupby(["variant", "dataset"])["full_s"].mean()
    by_kind = done.groupby(["dataset", "backbone_frozen", "chrc"])["full_s"].mean()
    seconds, unknown = 0.0, 0
    for cell in cells.itertuples():
        if (cell.variant, cell.dataset) in by_variant.index:
            seconds += float(by_variant[(cell.variant, cell.dataset)])
        elif (cell.dataset, cell.frozen, cell.chrc) in by_kind.index:
            seconds += float(by_kind[(cell.dataset, cell.frozen, cell.chrc)])
        else:
            unknown += 1
    return seconds / 3600.0, unknown
