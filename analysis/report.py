"""``hmem report EXP_DIR [EXP_DIR ...] --out FILE``: verdicts, tables and figures in one file.

HTML (figures embedded as PNG data) or Markdown (figures as PNG files beside it, in
``FILE_files/``), chosen by the extension. The notebook ``analysis/report.ipynb`` shows the same
tables and figures interactively; both are built from :func:`build`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import figures
from analysis.campaign_log import CampaignLog, campaigns, expand, stage_of
from analysis.compute import compute_table, exhaustive_hours, trial_hours
from analysis.loading import AnalysisError, load_trials
from analysis.reproduce import commands
from analysis.rules import Rules, variant_table, verdicts
from hmem.spaces import SearchSpace

VERDICT_COLUMNS = ["direction", "dataset", "best_variant", "selected_on", "select_mse", "mse",
                   "seeds", "gain", "reproduced", "reproductions", "ineffective", "acted",
                   "acted_rule", "gain_vs_baseline", "best_baseline", "p_value", "noise_floor",
                   "success", "verdict", "notes"]
VARIANT_COLUMNS = ["direction", "variant", "dataset", "backbone_regime", "select_mse",
                   "seed_mse", "mse", "seed_gains", "gain", "acted", "inert", "gain_vs_baseline",
                   "p_value", "seed_p", "noise_floor", "ms_per_step", "stopped", "pair_note"]
PERCENT = ("gain", "gain_vs_baseline", "noise_floor")
REPRODUCE_NOTE = ("The commands that produced these experiments, read off their launch records "
                  "(a campaign's stages: the campaign), then this report's; the benchmark files "
                  "are found through $HMEM_DATA_DIR.")
TUNING_TITLE = "Tuned on validation (beyond the plan)"
COMPUTE_NOTE = ("Trial-hours: the seconds each run took (set-up, warm-up and test stream), "
                "summed; 'without_stopping' costs each run stopped for futility as if it had "
                "streamed to the end.")


@dataclass
class Analysis:
    """Everything a report shows, computed once."""

    experiments: list[str]
    trials: pd.DataFrame
    variants: pd.DataFrame
    verdicts: pd.DataFrame
    rules: Rules
    grid: pd.DataFrame | None = None  # the full grid of a space, to cost against (grid_cells)
    tuning: pd.DataFrame | None = None  # trials of tuning searches on validation (--tuning)
    commands: list[str] = field(default_factory=list)  # what reproduces it (analysis.reproduce)
    campaigns: list[CampaignLog] = field(default_factory=list)  # those whose stages are given

    @property
    def compute(self) -> pd.DataFrame:
        return compute_table(self.trials).round({"trial_hours": 2, "without_stopping": 2})

    def compute_note(self) -> str:
        """What the runs cost, and against the exhaustive grid when a space was given."""
        if self.grid is None or not self.trials["wall_s"].notna().any():
            return COMPUTE_NOTE
        grid, unknown = exhaustive_hours(self.trials, self.grid)
        missing = f" ({unknown} cells with no run to estimate from left out)" if unknown else ""
        return (f"{COMPUTE_NOTE} The exhaustive grid ({len(self.grid)} runs: every variant x "
                f"dataset x seed of the space, each to the end) would take about {grid:.1f} "
                f"trial-hours at the cost these runs measured{missing}; "
                + self._used_against(grid))

    def _used_against(self, grid: float) -> str:
        """The trial-hours used, as a share of the grid's. A campaign is what stands in for the
        grid, so when experiments outside it are given too (a tuned control, a baseline run
        apart), its stages are set against the grid and the others are added apart."""
        total = trial_hours(self.trials)
        staged = self.trials["experiment_path"].map(
            lambda location: stage_of(location, self.campaigns) is not None)
        if not staged.any():
            return f"these experiments used {total:.1f} ({100 * total / grid:.0f}%)."
        used = trial_hours(self.trials[staged])
        head = f"the campaign's stages used {used:.1f} ({100 * used / grid:.0f}%)"
        if staged.all():
            return head + "."
        others = ", ".join(self.trials.loc[~staged, "experiment"].unique())
        return (f"{head}; the other experiments given ({others}), outside the campaign, "
                f"{total - used:.1f} more: {total:.1f} in all ({100 * total / grid:.0f}%).")

    @property
    def failed(self) -> pd.DataFrame:
        return self.trials[~self.trials["valid"]][
            ["experiment", "variant", "dataset", "seed", "status", "note"]]

    def figures(self) -> dict[str, Figure]:
        drawn = {
            "MSE per variant (every seed)": figures.mse_per_variant(self.trials),
            "A1 beta sweep": figures.beta_sweep(self.trials),
            "Rolling online MSE against the control": figures.rolling_mse(self.trials),
            "Gain heatmap": figures.gain_heatmap(self.variants),
        }
        return {title: fig for title, fig in drawn.items() if fig is not None}


def tuning_note(trials: pd.DataFrame) -> str:
    """What the tuning searches tried, and what each selected on validation: one selection per
    dataset, since validation MSEs of different datasets are not comparable."""
    return "\n\n".join(_tuning_note_of(dataset, group)
                       for dataset, group in trials.groupby("dataset", sort=False))


def _tuning_note_of(dataset: str, trials: pd.DataFrame) -> str:
    ranked = trials[trials["warmup_mse"].notna()]
    # a trial the scheduler cut wrote no metrics.json: Ray's clock has its time
    seconds = trials["wall_s"].fillna(trials.get("ray_time_s", math.nan)).sum()
    head = (f"{dataset}: {len(trials)} trial(s) of {', '.join(trials['experiment'].unique())} "
            f"({seconds / 3600:.2f} trial-hours)")
    if ranked.empty:
        return f"{head}, none with a validation MSE."
    best = ranked.loc[ranked["warmup_mse"].idxmin()]
    sampled = [c for c in _sampled(trials) if pd.notna(best[c])]
    return (f"{head}, sampled by the search and scored on the validation (warm-up) stream only; "
            f"{len(ranked)} ran the whole warm-up (the others were cut by the scheduler). "
            f"Selected: validation MSE {best['warmup_mse']:.5f}, "
            + ", ".join(f"{c.removeprefix('sampled.')}={best[c]:.4g}" for c in sampled)
            + ". Its test runs, if given among the experiments, are a control row of the "
            "verdicts above.")


def _sampled(trials: pd.DataFrame) -> list[str]:
    """The columns a search sampled that these trials have values for."""
    return [c for c in trials if c.startswith("sampled.") and trials[c].notna().any()]


def tuning_table(trials: pd.DataFrame, rows: int = 10) -> pd.DataFrame:
    """The best tuning trials of each dataset by validation MSE, with what was sampled."""
    trials = trials.dropna(subset=["warmup_mse"]).sort_values(["dataset", "warmup_mse"],
                                                              kind="stable")
    sampled = _sampled(trials)
    shown = trials[["experiment", "variant", "dataset", "seed", "warmup_mse", *sampled]]
    shown = shown.groupby("dataset").head(rows).copy()
    shown["warmup_mse"] = [f"{v:.5f}" for v in shown["warmup_mse"]]
    for column in sampled:  # learning rates are small: significant figures, not decimals
        shown[column] = [f"{v:.4g}" if isinstance(v, float) else v for v in shown[column]]
    return shown.rename(columns=lambda c: c.removeprefix("sampled."))


def grid_cells(space: SearchSpace) -> pd.DataFrame:
    """Every variant x dataset x seed of ``space``, with what sets its cost."""
    rows = []
    for cell in space.cells():
        cfg = space.trial_config(cell.variant, cell.dataset, cell.seed)
        rows.append({"variant": cell.variant, "dataset": cell.dataset, "seed": cell.seed,
                     "frozen": cfg.backbone_regime.frozen, "chrc": cfg.chrc.enabled})
    return pd.DataFrame(rows)


def build(experiments: Sequence[str | os.PathLike] | str | os.PathLike,
          rules: Rules = Rules(), space: SearchSpace | None = None,
          tuning: Sequence[str | os.PathLike] = (), command: str | None = None) -> Analysis:
    """Load, pair, judge. A single folder may be given as a plain string or path; ``space``
    (the search space the experiments come from) adds the exhaustive grid's cost; ``tuning``:
    searches that tuned a configuration on validation (shown apart: they have no test score);
    ``command``: the report command, listed last among those that reproduce the report. A
    campaign's folder stands for every stage it has started."""
    if isinstance(experiments, (str, os.PathLike)):
        experiments = [experiments]
    experiments, tuning = expand(experiments), expand(tuning)
    if not experiments:
        raise AnalysisError("no experiment to report on: the campaign folder(s) given hold no "
                            "stage yet")
    trials = load_trials(experiments)
    variants = variant_table(trials, rules)
    logs = campaigns([*experiments, *tuning])  # each campaign.log read once
    staged = {Path(e).parent for e in experiments}
    return Analysis(experiments, trials, variants, verdicts(variants, rules), rules,
                    grid_cells(space) if space is not None else None,
                    load_trials(tuning) if tuning else None,
                    commands(experiments, tuning, command, logs),
                    [log for log in logs if log.folder in staged])


def _cell(column: str, value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column in PERCENT:
        return f"{100 * value:+.2f}%"
    if column in ("mse", "select_mse"):
        return f"{value:.4f}"
    if column in ("p_value", "acted"):
        return f"{value:.3g}"
    if column == "ms_per_step":
        return f"{value:.2f}"
    return value


def display_table(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The columns a reader needs, gains and noise as percentages, MSE to 4 decimals."""
    shown = frame[[c for c in columns if c in frame]].copy()
    for column in shown.columns:
        if column in (*PERCENT, "mse", "select_mse", "p_value", "acted", "ms_per_step"):
            shown[column] = [_cell(column, v) for v in shown[column]]
    return shown.fillna("")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _header(analysis: Analysis) -> tuple[str, list[str]]:
    rules = analysis.rules
    thresholds = ", ".join(f"{d} MSE < {t:g}" for d, t in rules.success_mse.items())
    lines = [
        f"Generated {dt.datetime.now().isoformat(timespec='seconds')} from "
        f"{len(analysis.trials)} trial(s) of {', '.join(analysis.experiments)}.",
        f"Rules: a gain counts from {100 * rules.min_gain:g}% (paired with the control of the "
        f"same dataset, seed, backbone and backbone learning rate); {rules.ineffective_run} "
        f"consecutive experiments below it make a direction ineffective; the best variant is "
        f"chosen on validation MSE (warm-up, or where a dataset has none the first "
        f"{100 * rules.selection_share:g}% of the test stream, whose figures then cover the rest "
        f"only), on its first {rules.selection_seeds} seed(s); it is reproduced when "
        f"{rules.min_reproductions} further seeds each beat the control by the gain threshold; "
        f"success: reproduced with every reproduction seed below {thresholds}.",
        "Inert: a direction whose mechanism did not measurably act ("
        + "; ".join(f"{d}: {a.describe()}" for d, a in rules.acted.items())
        + ") gets no verdict on its idea, never counts towards 'ineffective' and closes no gate.",
        "Beyond the plan: the gain over the best CHRC-free baseline of the same backbone regime "
        "(chosen on validation among the online learning rates for a learning backbone; the "
        "frozen backbone for a frozen one) on the same stream; the p-value of a batch-means "
        "t-test of equal per-window loss against the control (8 contiguous blocks; each seed "
        "against the control of the same seed, combined as an intersection-union test), whose "
        "size was checked by simulation on overlapping and persistent loss differentials; and "
        "the control's seed-to-seed spread (3 seeds or more) as the noise floor.",
    ]
    return "H-Mem 2.1 ablation report", [c.status() for c in analysis.campaigns] + lines


def _decisions_title(campaign: CampaignLog) -> str:
    return f"Decisions of campaign {campaign.name}" + ("" if campaign.finished else
                                                      " (not finished)")


def _decision_lines(campaign: CampaignLog) -> list[str]:
    """``campaign.log`` as the campaign wrote it: each stage, gate and verdict, and why."""
    return [f"{d.time} {d.text}" for d in campaign.decisions]


def to_html(analysis: Analysis) -> str:
    title, lines = _header(analysis)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
             "padding:3px 6px}th{background:#eee}</style></head><body>",
             f"<h1>{title}</h1>", *[f"<p>{html.escape(line)}</p>" for line in lines],
             "<h2>Verdicts</h2>",
             display_table(analysis.verdicts, VERDICT_COLUMNS).to_html(index=False),
             "<h2>MSE per variant</h2>",
             display_table(analysis.variants, VARIANT_COLUMNS).to_html(index=False)]
    if not analysis.failed.empty:
        parts += ["<h2>Trials that do not count</h2>", analysis.failed.to_html(index=False)]
    for campaign in analysis.campaigns:
        parts += [f"<h2>{html.escape(_decisions_title(campaign))}</h2>",
                  "<pre>" + html.escape(chr(10).join(_decision_lines(campaign))) + "</pre>"]
    parts += ["<h2>Compute</h2>", f"<p>{html.escape(analysis.compute_note())}</p>",
              analysis.compute.to_html(index=False)]
    if analysis.tuning is not None:
        parts += [f"<h2>{TUNING_TITLE}</h2>",
                  *(f"<p>{html.escape(part)}</p>"
                    for part in tuning_note(analysis.tuning).split("\n\n")),
                  tuning_table(analysis.tuning).to_html(index=False)]
    parts += ["<h2>Reproduce</h2>", f"<p>{REPRODUCE_NOTE}</p>",
              f"<pre>{html.escape(chr(10).join(analysis.commands))}</pre>"]
    for name, fig in analysis.figures().items():
        data = base64.b64encode(_png(fig)).decode()
        parts += [f"<h2>{html.escape(name)}</h2>", f"<img alt='{html.escape(name)}' "
                  f"src='data:image/png;base64,{data}'>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def to_markdown(analysis: Analysis, assets: Path) -> str:
    title, lines = _header(analysis)
    parts = [f"# {title}", "", *[f"{line}\n" for line in lines], "## Verdicts", "",
             display_table(analysis.verdicts, VERDICT_COLUMNS).to_markdown(index=False), "",
             "## MSE per variant", "",
             display_table(analysis.variants, VARIANT_COLUMNS).to_markdown(index=False), ""]
    if not analysis.failed.empty:
        parts += ["## Trials that do not count", "", analysis.failed.to_markdown(index=False), ""]
    for campaign in analysis.campaigns:
        parts += [f"## {_decisions_title(campaign)}", "", "```text",
                  *_decision_lines(campaign), "```", ""]
    parts += ["## Compute", "", analysis.compute_note(), "",
              analysis.compute.to_markdown(index=False), ""]
    if analysis.tuning is not None:
        parts += [f"## {TUNING_TITLE}", "", tuning_note(analysis.tuning), "",
                  tuning_table(analysis.tuning).to_markdown(index=False), ""]
    parts += ["## Reproduce", "", REPRODUCE_NOTE, "", "```bash", *analysis.commands, "```", ""]
    for index, (name, fig) in enumerate(analysis.figures().items()):
        assets.mkdir(parents=True, exist_ok=True)
        path = assets / f"figure{index + 1}.png"
        path.write_bytes(_png(fig))
        parts += [f"## {name}", "", f"![{name}]({assets.name}/{path.name})", ""]
    return "\n".join(parts)


def write_report(experiments: Sequence[str | os.PathLike], out: str | os.PathLike,
                 rules: Rules = Rules(), space: SearchSpace | None = None,
                 tuning: Sequence[str | os.PathLike] = (), command: str | None = None) -> Analysis:
    """Analyse ``experiments`` (and ``tuning`` searches) and write the report to ``out``
    (.html or .md); ``command``: how it was asked for, listed among the commands that
    reproduce it."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm", ".md", ".markdown"):
        raise AnalysisError(f"{out}: the report is written as .html or .md (got "
                            f"'{out.suffix or 'no extension'}')")
    analysis = build(experiments, rules, space, tuning, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".html", ".htm"):
        text = to_html(analysis)
    else:
        text = to_markdown(analysis, out.with_name(f"{out.stem}_files"))
    temporary = out.with_name(f".{out.name}.partial")
    temporary.write_text(text)
    temporary.replace(out)  # a reader never sees half a report
    return analysis

