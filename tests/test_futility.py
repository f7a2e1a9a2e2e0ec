"""The futility rule (analysis.futility): its looks and alpha spending, its size and power on
simulated streams as dependent as real ones, and its replay of finished runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.futility import REAL_SPREAD, FutilityRule, first_stop, scale_for, simulate
from analysis.significance import final_gain_bound, spent_alpha

ETTM1_WINDOWS, H = 43105, 96


def test_looks_start_at_the_minimum_share_and_spend_at_most_alpha():
    rule = FutilityRule()
    looks = rule.looks(1000)
    assert looks[0] == 250 and looks[-1] == 950 and len(looks) == 15
    levels = [rule.level(looks, i, 1000) for i in range(len(looks))]
    assert all(level > 0 for level in levels)
    assert sum(levels) == pytest.approx(spent_alpha(0.95, 0.05)) and sum(levels) < 0.05
    assert spent_alpha(1.0, 0.05) == pytest.approx(0.05)


def test_the_bound_counts_seen_windows_exactly_and_predicts_the_rest():
    control = np.ones(4000)
    variant = np.full(4000, 0.99)  # a constant 1 % gain: nothing uncertain about it
    bound = final_gain_bound(control[:2000], variant[:2000], control.sum(), 4000, 0.01, 12)
    assert bound.gain == pytest.approx(0.01) and bound.bound == pytest.approx(0.01)
    noisy = variant + np.random.default_rng(0).normal(0, 0.05, 4000)
    wide = final_gain_bound(control[:2000], noisy[:2000], control.sum(), 4000, 0.01, 12)
    late = final_gain_bound(control[:3900], noisy[:3900], control.sum(), 4000, 0.01, 12)
    assert wide.bound > wide.gain and late.bound - late.gain < wide.bound - wide.gain
    with pytest.raises(ValueError, match="too few"):
        final_gain_bound(control[:100], variant[:100], control.sum(), 4000, 0.01, 12)


def test_a_variant_that_matches_its_control_exactly_is_stopped_at_the_first_look():
    control = 1 + np.random.default_rng(1).random(ETTM1_WINDOWS)
    look = first_stop(FutilityRule(), control, control.copy(), H)
    assert look is not None and look.index == 0 and look.bound.gain == 0.0
    assert look.record()["window"] == math.ceil(0.25 * ETTM1_WINDOWS)


@pytest.mark.parametrize("kind", ["persistent", "overlap"])
def test_on_simulated_streams_a_real_gain_runs_on_and_a_null_is_stopped(kind, capsys):
    """The issue's acceptance: with B1-MLP's measured noise, a true 1 % gain is stopped in at
    most 5 % of streams, a null variant in most of them, and a stop is almost never wrong."""
    rule = FutilityRule()
    scale = scale_for(REAL_SPREAD["B1-like"], ETTM1_WINDOWS, H, kind)
    real = simulate(rule, 0.01, scale, 200, ETTM1_WINDOWS, H, np.random.default_rng(7), kind)
    null = simulate(rule, 0.0, scale, 200, ETTM1_WINDOWS, H, np.random.default_rng(8), kind)
    with capsys.disabled():
        print(f"\n[{kind}, B1-like noise, 200 streams] true gain 1 %: stopped "
              f"{100 * real.stopped:.1f}%; null: stopped {100 * null.stopped:.1f}%, "
              f"{100 * null.saved:.0f}% of windows saved; wrong stops {100 * null.wrong:.1f}%")
    assert real.stopped <= 0.05
    assert null.stopped >= 0.5 and null.saved > 0.2
    assert null.wrong <= 0.05


def _run(experiment, wall_s, steps, warmup_steps=0, stopped_of=None, **row):
    """A loaded trial row as far as compute needs it (a test stream of 4000 windows)."""
    return {"experiment": experiment, "dataset": "ETTm1", "wall_s": wall_s, "steps": steps,
            "warmup_steps": warmup_steps, "stopped": stopped_of is not None,
            "stopped_window": steps if stopped_of else math.nan,
            "stopped_of": stopped_of or math.nan, **row}


def test_compute_counts_trial_hours_and_costs_partial_runs_as_if_they_ran_to_the_end():
    import pandas as pd

    from analysis.compute import compute_table

    trials = pd.DataFrame([
        _run("S0", 3600.0, 4000),
        _run("A1", 900.0, 1000, stopped_of=4000),  # stopped for futility at a quarter
        _run("A1", math.nan, math.nan),  # never ran: costs nothing
        _run("select", 720.0, 0, warmup_steps=1000),  # validation only: 1000 of 5000 windows
        _run("select", 200.0, 800, warmup_steps=1000),  # warm-up, then 20 % of the test
    ])
    table = compute_table(trials).set_index("experiment")
    assert table.loc["A1", "runs"] == 1 and table.loc["A1", "stopped"] == 1
    assert table.loc["A1", "trial_hours"] == 0.25 and table.loc["A1", "without_stopping"] == 1.0
    assert table.loc["select", "trial_hours"] == pytest.approx(920 / 3600)
    assert table.loc["select", "without_stopping"] == pytest.approx((720 * 5 + 200 * 5 / 1.8)
                                                                     / 3600)
    assert table.loc["total", "trial_hours"] == pytest.approx(1.25 + 920 / 3600)


def test_the_exhaustive_grid_is_costed_from_the_runs_measured():
    import pandas as pd

    from analysis.compute import exhaustive_hours

    trials = pd.DataFrame([
        _run("S0", 3600.0, 4000, variant="p2p7p8", direction="control", backbone_frozen=False),
        _run("A1", 1800.0, 2000, stopped_of=4000, variant="a1", direction="A1",
             backbone_frozen=False),  # 1 h to the end
        _run("S0", 360.0, 4000, variant="frozen", direction="baseline", backbone_frozen=True),
        # a selection run on the first 10 % of the test: 0.5 h to the end, not 0.05 h
        _run("select", 180.0, 400, variant="online", direction="baseline",
             backbone_frozen=False),
        # a run that streamed nothing (no warm-up, no test): costed as its kind, like a1 -> a2
        _run("select", 1.0, 0, variant="online_fast", direction="baseline",
             backbone_frozen=False),
    ])
    cells = pd.DataFrame([
        {"variant": v, "dataset": "ETTm1", "frozen": f, "chrc": c}
        for v, f, c in [("p2p7p8", False, True), ("p2p7p8", False, True), ("a1", False, True),
                        ("a2", False, True),  # never ran: costed as an online CHRC run
                        ("frozen", True, False), ("online", False, False),
                        ("online_fast", False, False), ("b3_frozen", True, True)]])  # unknown
    hours, unknown = exhaustive_hours(trials, cells)
    assert hours == pytest.approx(1 + 1 + 1 + 1 + 0.1 + 0.5 + 0.5) and unknown == 1


def test_a_campaign_is_set_against_the_grid_without_the_experiments_given_beside_it():
    """The one-third target is the campaign's: a tuned control or a baseline run apart, given to
    the same report, is added apart instead of counting towards the campaign's share."""
    from pathlib import Path

    import pandas as pd

    from analysis.campaign_log import CampaignLog
    from analysis.report import Analysis
    from analysis.rules import Rules

    kind = {"dataset": "ETTm1", "direction": "control", "backbone_frozen": False}
    stages = [_run("S0", 3600.0, 4000, variant="p2p7p8", **kind,
                   experiment_path="runs/plan/S0"),
              _run("A1", 900.0, 1000, stopped_of=4000, variant="a1", **kind,
                   experiment_path="runs/plan/A1")]
    extra = _run("tuned", 1800.0, 4000, variant="p2p7p8_tuned", **{**kind, "dataset": "Weather"},
                 experiment_path="runs/extra/tuned")  # not in the grid, and costs none of it
    cells = pd.DataFrame([{"variant": v, "dataset": "ETTm1", "frozen": False, "chrc": True}
                          for v in ("p2p7p8", "a1", "a2", "a2")])  # 4 h to the end
    plan = CampaignLog(Path("runs/plan"), "plan", "plan.yaml", (), ("S0", "A1"), True)

    def note(rows, campaigns):
        trials = pd.DataFrame(rows)
        return Analysis([], trials, pd.DataFrame(), pd.DataFrame(), Rules(), cells,
                        campaigns=campaigns).compute_note()

    assert note([*stages, extra], [plan]).endswith(
        "would take about 4.0 trial-hours at the cost these runs measured; the campaign's stages "
        "used 1.2 (31%); the other experiments given (tuned), outside the campaign, 0.5 more: "
        "1.8 in all (44%).")
    assert note(stages, [plan]).endswith("the campaign's stages used 1.2 (31%).")
    assert note([*stages, extra], []).endswith("these experiments used 1.8 (44%).")
