"""What a set of experiments cost, in trial-hours, and what it would have cost without stopping.

A trial-hour is one trial running for an hour (its ``seconds_total``: set-up, warm-up and test
stream, the cores it was given); it is the unit in which a campaign is compared with the
exhaustive grid. A run stopped for futility is also costed as if it had run to the end (its
seconds scaled by the windows it skipped), so that the saving is visible.
"""

from __future__ import annotations

import pandas as pd


def _full_stream_seconds(row) -> float:
    if bool(row.get("stopped", False)) and row["stopped_window"] > 0:
        return float(row["wall_s"]) * float(row["stopped_of"]) / float(row["stopped_window"])
    return float(row["wall_s"])


def compute_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per experiment (and in total): runs with results, runs stopped for futility, the
    trial-hours used, and the trial-hours the same runs would have taken to the end."""
    done = trials[trials["wall_s"].notna()].copy()
    if done.empty:
        return pd.DataFrame(columns=["experiment", "runs", "stopped", "trial_hours",
                                     "without_stopping"])
    if "stopped" not in done:
        done["stopped"] = False
    done["full_s"] = [_full_stream_seconds(row) for _, row in done.iterrows()]
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
    done["full_s"] = [_full_stream_seconds(row) for _, row in done.iterrows()]
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
