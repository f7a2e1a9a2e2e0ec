"""The report's figures, each a function of the tables that returns a matplotlib Figure (or None
when there is nothing to draw), so the HTML report and the notebook draw the same pictures."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.loading import load_losses
from hmem.directions import Direction

#: Line styles that tell the controls of different backbone regimes apart in one panel.
CONTROL_STYLES = ("-", "--", "-.", ":")


def _datasets(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["dataset"]))


def _controls(rows: pd.DataFrame, compared: pd.DataFrame | None = None):
    """The control runs among ``rows``, one group per backbone regime (the regimes of
    ``compared`` only, when given): every regime has its own control."""
    controls = rows[rows["direction"] == Direction.CONTROL]
    if compared is not None:
        controls = controls[controls["backbone_regime"].isin(set(compared["backbone_regime"]))]
    return list(controls.groupby("backbone_regime", sort=False))


def mse_per_variant(trials: pd.DataFrame) -> Figure | None:
    """Test MSE of every variant, every seed a dot, the mean a bar; the control as a line."""
    valid = trials[trials["valid"]]
    if valid.empty:
        return None
    datasets = _datasets(valid)
    fig = Figure(figsize=(11, 3.2 * len(datasets)))
    axes = fig.subplots(len(datasets), 1, squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        rows = valid[valid["dataset"] == dataset]
        variants = list(dict.fromkeys(rows["variant"]))
        means = rows.groupby("variant", sort=False)["mse"].mean().reindex(variants)
        ax.bar(range(len(variants)), means, color="#c8d6e5", label="mean over seeds")
        for i, variant in enumerate(variants):
            values = rows.loc[rows["variant"] == variant, "mse"]
            ax.scatter(np.full(len(values), i), values, color="#222f3e", s=14, zorder=3)
        for (label, group), style in zip(_controls(rows), CONTROL_STYLES[1:]):
            ax.axhline(group["mse"].mean(), color="#ee5253", lw=1, ls=style,
                       label=f"control, {label}")
        low, high = rows["mse"].min(), rows["mse"].max()
        ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
        ax.set_xticks(range(len(variants)), variants, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("test MSE")
        ax.set_title(dataset)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def beta_sweep(trials: pd.DataFrame) -> Figure | None:
    """A1: test MSE against beta, one line per dataset, the control's MSE as a dashed line."""
    if "cfg.snma.beta" not in trials:
        return None
    valid = trials[trials["valid"]]
    a1 = valid[valid["direction"] == Direction.A1]
    if a1["cfg.snma.beta"].nunique() < 2:
        return None
    datasets = _datasets(a1)
    fig = Figure(figsize=(4.5 * len(datasets), 3.2))
    axes = fig.subplots(1, len(datasets), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = a1[a1["dataset"] == dataset]
        curve = rows.groupby("cfg.snma.beta")["mse"].agg(["mean", "min", "max"])
        ax.plot(curve.index, curve["mean"], marker="o", color="#10ac84", label="A1 (mean)")
        ax.fill_between(curve.index, curve["min"], curve["max"], color="#10ac84", alpha=0.2,
                        label="seed range")
        controls = valid[valid["dataset"] == dataset]
        for (label, group), style in zip(_controls(controls, rows), CONTROL_STYLES[1:]):
            ax.axhline(group["mse"].mean(), color="#ee5253", ls=style, lw=1,
                       label=f"control, {label}")
        ax.set_xlabel("beta")
        ax.set_ylabel("test MSE")
        ax.set_title(f"A1 beta sweep, {dataset}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def rolling_mse(trials: pd.DataFrame, window: int | None = None,
                loader=load_losses) -> Figure | None:
    """Rolling per-window test MSE of each variant (seed-averaged) against the control.

    The rolling window defaults to a twentieth of the stream (at most 2000 windows)."""
    valid = trials[trials["valid"]]
    if valid.empty:
        return None
    datasets = _datasets(valid)
    fig = Figure(figsize=(11, 3.4 * len(datasets)))
    axes = fig.subplots(len(datasets), 1, squeeze=False)
    drawn, span = False, window
    for ax, dataset in zip(axes[:, 0], datasets):
        rows = valid[valid["dataset"] == dataset]
        styles = iter(CONTROL_STYLES * len(rows))  # each control (one per regime) its own line
        for variant, group in rows.groupby("variant", sort=False):
            losses = [loader(r.trial_path, r.experiment_path) for r in group.itertuples()]
            losses = [c for c in losses if c is not None]
            if not losses or len({len(c) for c in losses}) != 1:
                continue
            span = window or max(10, min(2000, len(losses[0]) // 20))
            curve = pd.Series(np.mean(losses, axis=0)).rolling(span, min_periods=1).mean()
            control = group["direction"].iloc[0] == Direction.CONTROL
            ax.plot(curve.index, curve.values, lw=1.6 if control else 0.9,
                    color="black" if control else None, alpha=1.0 if control else 0.75,
                    ls=next(styles) if control else "-", label=variant,
                    zorder=3 if control else 2)
            drawn = True
        ax.set_title(f"{dataset}: rolling test MSE (window {span})" if drawn else dataset)
        ax.set_xlabel("test window")
        ax.set_ylabel("MSE")
        ax.legend(fontsize=6, ncol=4)
    fig.tight_layout()
    return fig if drawn else None


def gain_heatmap(variants: pd.DataFrame) -> Figure | None:
    """Mean paired gain (%) of every variant (rows) on every dataset (columns)."""
    judged = variants[(variants["direction"] != Direction.CONTROL) & variants["gain"].notna()]
    if judged.empty:
        return None
    grid = judged.pivot_table(index="variant", columns="dataset", values="gain", sort=False) * 100
    limit = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
    fig = Figure(figsize=(2.0 + 1.6 * grid.shape[1], 0.8 + 0.38 * grid.shape[0]))
    ax = fig.subplots()
    image = ax.imshow(grid.to_numpy(), cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    for (i, j), value in np.ndenumerate(grid.to_numpy()):
        if not np.isnan(value):
            ax.text(j, i, f"{value:+.1f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="gain vs control (%)")
    ax.set_title("paired gain over the control")
    fig.tight_layout()
    return fig
