"""The plan's rules on hand-made trial tables (no Ray): pairing, ineffective, reproduced,
success, gates, the baseline and noise checks, and the Diebold-Mariano test."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.rules import (
    Rules,
    a2_gate,
    ineffective,
    paired_gains,
    s3_pair,
    variant_table,
    verdicts,
)
from analysis.significance import diebold_mariano, noise_floor

ONLINE, FROZEN = "backbone=online@1e-06", "backbone=frozen"


def trial(variant, direction, seed, mse, dataset="ETTm1", regime=ONLINE, key="k1",
          valid=True, order=0, experiment=0):
    return {"experiment": f"e{experiment}", "experiment_path": "/x", "experiment_index":
            experiment, "variant_order": order, "direction": direction, "variant": variant,
            "dataset": dataset, "seed": seed, "regime": f"{regime} chrc=on",
            "backbone_key": key, "status": "TERMINATED" if valid else "ERROR",
            "valid": valid, "note": "" if valid else "trial error", "mse": mse,
            "ms_per_step": 1.0, "trial_path": f"{variant}-{dataset}-{seed}",
            "cfg.data.horizon": 4}


def table(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def judge(trials, rules=Rules(), curves=None):
    variants = variant_table(trials, rules, curves=curves)
    return variants, verdicts(variants, rules)


def control(seed, mse, **kw):
    return trial("p2p7p8", "control", seed, mse, **kw)


# ----------------------------------------------------------------------------- pairing


def test_gain_is_paired_with_the_control_of_the_same_seed_and_backbone_regime():
    trials = table(control(0, 1.0), control(1, 2.0),
                   control(0, 4.0, regime=FROZEN), control(1, 4.0, regime=FROZEN),
                   trial("b3", "B3", 0, 0.9), trial("b3", "B3", 1, 1.0),
                   trial("b3_frozen", "B3", 0, 3.0, regime=FROZEN))
    gains = paired_gains(trials).set_index(["variant", "seed"])["gain"]
    assert gains[("b3", 0)] == pytest.approx(0.1)  # (1.0 - 0.9) / 1.0
    assert gains[("b3", 1)] == pytest.approx(0.5)  # against seed 1's control, not the mean
    assert gains[("b3_frozen", 0)] == pytest.approx(0.25)  # against the frozen control


def test_a_run_without_its_control_says_why():
    trials = table(control(0, 1.0), trial("a1", "A1", 1, 0.9), trial("a1", "A1", 0, 0.8),
                   trial("b1", "B1", 0, 0.8, dataset="Weather"),
                   trial("b3", "B3", 0, 0.7, key="other"))
    notes = paired_gains(trials).set_index(["variant", "seed"])["pair_note"]
    assert notes[("a1", 1)] == "no control run with seed 1 on ETTm1"
    assert notes[("b1", 0)] == f"no control run on Weather with {ONLINE}"
    assert "mixed backbone keys" in notes[("b3", 0)] and "k1" in notes[("b3", 0)]
    _, verdict = judge(trials)
    weather = verdict[verdict["dataset"] == "Weather"].iloc[0]
    assert math.isnan(weather["gain"]) and weather["verdict"].startswith("no verdict: no control")


def test_failed_and_nan_trials_never_count():
    trials = table(control(0, 1.0), control(1, 1.0), trial("a1", "A1", 0, 0.5),
                   trial("a1", "A1", 1, 0.1, valid=False))
    variants, _ = judge(trials)
    a1 = variants[variants["variant"] == "a1"].iloc[0]
    assert a1["seeds"] == 1 and a1["mse"] == 0.5


# ----------------------------------------------------------------------------- the rules


def test_two_consecutive_small_gains_make_a_direction_ineffective_and_are_named():
    rules = Rules()
    assert ineffective([("a", 0.02), ("b", 0.004), ("c", 0.001)], rules) == ("b", "c")
    assert ineffective([("a", 0.004), ("b", 0.02), ("c", 0.001)], rules) is None
    assert ineffective([("a", 0.001), ("b", math.nan), ("c", 0.001)], rules) is None
    assert ineffective([("a", -0.1), ("b", -0.2)], Rules(ineffective_run=3)) is None


def test_ineffective_follows_the_declared_order_of_experiments():
    trials = table(control(0, 1.0), control(1, 1.0),
                   *[trial(v, "A1", s, m, order=o) for o, (v, m) in
                     enumerate([("a1_base", 0.999), ("a1_b2", 0.98), ("a1_b3", 0.999)])
                     for s in (0, 1)])
    _, verdict = judge(trials)
    assert not verdict.set_index("direction").loc["A1", "ineffective"]  # 0.1 %, 2 %, 0.1 %
    trials.loc[trials["variant"] == "a1_b2", "variant_order"] = 5  # now declared last
    _, verdict = judge(trials)
    row = verdict.set_index("direction").loc["A1"]
    assert row["ineffective"] and row["ineffective_pair"] == "a1_base -> a1_b3"


def test_a_best_variant_counts_only_when_two_seeds_each_beat_the_control():
    trials = table(control(0, 1.0), control(1, 1.0), control(2, 1.0),
                   trial("a1", "A1", 0, 0.95), trial("a1", "A1", 1, 0.999),
                   trial("b1", "B1", 0, 0.97), trial("b1", "B1", 1, 0.98))
    _, verdict = judge(trials)
    rows = verdict.set_index("direction")
    assert not rows.loc["A1", "reproduced"] and rows.loc["A1", "reproductions"] == "1/2"
    assert "needs reproduction" in rows.loc["A1", "verdict"]
    assert rows.loc["B1", "reproduced"] and rows.loc["B1", "reproductions"] == "2/2"
    single = table(control(0, 1.0), trial("a1", "A1", 0, 0.5))
    assert "needs reproduction" in judge(single)[1].set_index("direction").loc["A1", "verdict"]


def test_success_needs_a_reproduced_variant_below_the_dataset_threshold():
    def best(mse0, mse1, dataset):
        trials = table(control(0, 1.0, dataset=dataset), control(1, 1.0, dataset=dataset),
                       trial("a1", "A1", 0, mse0, dataset=dataset),
                       trial("a1", "A1", 1, mse1, dataset=dataset))
        return judge(trials)[1].set_index("direction").loc["A1"]

    assert best(0.69, 0.69, "ETTm1")["success"]
    assert not best(0.71, 0.69, "ETTm1")["success"]  # mean 0.700 is not below 0.700
    assert not best(0.69, 0.999, "ETTm1")["success"]  # not reproduced
    assert best(0.69, 0.69, "Weather")["success"]
    assert best(0.69, 0.69, "mydata")["success"] is None  # no threshold for this dataset
    assert best(0.69, 0.69, "mydata")["verdict"].startswith("reproduced gain")


def test_ties_are_reported_and_the_first_declared_variant_wins():
    trials = table(control(0, 1.0), trial("b1_bilinear", "B1", 0, 0.9, order=1),
                   trial("b1_mlp", "B1", 0, 0.9, order=2))
    row = judge(trials)[1].set_index("direction").loc["B1"]
    assert row["best_variant"] == "b1_bilinear" and row["notes"] == "tie with b1_mlp"


def test_every_verdict_shows_the_strongest_simple_baseline():
    trials = table(control(0, 0.712), control(1, 0.712),
                   trial("frozen", "baseline", 0, 0.90), trial("frozen", "baseline", 1, 0.90),
                   trial("online_slow", "baseline", 0, 0.717),
                   trial("online_slow", "baseline", 1, 0.717),
                   trial("a1", "A1", 0, 0.70), trial("a1", "A1", 1, 0.70))
    variants, verdict = judge(trials)
    rows = verdict.set_index("direction")
    assert rows.loc["A1", "best_baseline"] == "online_slow"
    assert rows.loc["A1", "gain_vs_baseline"] == pytest.approx((0.717 - 0.70) / 0.717)
    assert "control:" in rows.loc["control", "verdict"] and "online_slow" in rows.loc[
        "control", "verdict"]
    # gains 0.8 % over a weaker control, but only 0.4 % over plain slow fine-tuning
    weak = table(control(0, 0.72), control(1, 0.72), *trials.to_dict("records")[2:6],
                 trial("a1", "A1", 0, 0.714), trial("a1", "A1", 1, 0.714))
    assert "not better than online_slow" in judge(weak)[1].set_index("direction").loc[
        "A1", "verdict"]


def test_a_gain_inside_the_controls_seed_spread_is_flagged():
    trials = table(control(0, 1.0), control(1, 1.1), trial("a1", "A1", 0, 0.97),
                   trial("a1", "A1", 1, 1.06), trial("b3", "B3", 0, 1.3),
                   trial("b3", "B3", 1, 1.4))
    rows = judge(trials)[1].set_index("direction")
    row = rows.loc["A1"]
    assert row["noise_floor"] == pytest.approx(noise_floor([1.0, 1.1]))
    assert row["below_noise"] and "seed noise" in row["verdict"]
    # a loss far outside the spread is not noise
    assert not rows.loc["B3", "below_noise"] and "seed noise" not in rows.loc["B3", "verdict"]
    assert math.isnan(noise_floor([1.0]))  # one seed: unknown, not zero


def test_gates_of_the_plan():
    trials = table(control(0, 1.0), control(1, 1.0),
                   trial("a1", "A1", 0, 0.98), trial("a1", "A1", 1, 0.98),
                   trial("b1", "B1", 0, 0.999), trial("b1", "B1", 1, 0.999),
                   trial("b3", "B3", 0, 0.97), trial("b3", "B3", 1, 0.96))
    variants, verdict = judge(trials)
    gate = a2_gate(verdict, "ETTm1")
    assert gate.open and gate.variants == ("a1",)
    assert s3_pair(variants, "ETTm1").variants == ("a1", "b3")  # b1 did not gain
    closed = a2_gate(verdict, "ETTm1", Rules(min_gain=0.05))
    assert not closed.open and "< 5%" in closed.reason
    assert not s3_pair(variants, "ETTm1", Rules(min_gain=0.05)).open
    assert not a2_gate(verdict, "Weather").open  # no A1 run there


# ----------------------------------------------------------------------------- Diebold-Mariano


def test_diebold_mariano_detects_a_real_difference_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 1.0, 5000)
    noisy = base + rng.normal(0, 0.3, 5000)
    assert diebold_mariano(noisy, base + rng.normal(0, 0.3, 5000), horizon=4).p_value > 0.01
    better = diebold_mariano(base * 0.9, base, horizon=4)
    assert better.p_value < 1e-6 and better.statistic < 0
    same = diebold_mariano(base, base, horizon=4)
    assert same.p_value == 1.0 and same.statistic == 0.0


def test_diebold_mariano_variance_accounts_for_overlapping_windows():
    rng = np.random.default_rng(1)
    shocks = rng.normal(0.02, 1.0, 4096 + 23)
    differential = np.convolve(shocks, np.ones(24), mode="valid")  # MA(23): H = 24 overlap
    naive = diebold_mariano(differential, np.zeros_like(differential), horizon=1)
    hac = diebold_mariano(differential, np.zeros_like(differential), horizon=24)
    assert hac.lags == 23 and abs(hac.statistic) < abs(naive.statistic) / 2
    with pytest.raises(ValueError, match="too few"):
        diebold_mariano(np.ones(10), np.zeros(10), horizon=8)


def test_variant_table_runs_the_dm_test_on_per_window_losses():
    rng = np.random.default_rng(2)
    loss = rng.gamma(2.0, 1.0, 400)
    curves = {"p2p7p8-ETTm1-0": loss, "a1-ETTm1-0": loss * 0.8, "b1-ETTm1-0": loss}
    trials = table(control(0, 1.0), trial("a1", "A1", 0, 0.8), trial("b1", "B1", 0, 1.0))
    curves["b3-ETTm1-0"] = loss * 1.25
    trials = table(*trials.to_dict("records"), trial("b3", "B3", 0, 1.25))
    variants, verdict = judge(trials, curves=lambda path, exp: np.asarray(curves[path]))
    p = variants.set_index("variant")["dm_p"]
    assert p["a1"] < 1e-6 and p["b1"] == 1.0 and p["b3"] < 1e-6
    text = verdict.set_index("direction")["verdict"]
    assert text["B3"].startswith("worse than the control (-25.00%, DM p = ")
    assert text["B1"].startswith("no gain (+0.00%)") and "DM p = 1.00" in text["B1"]


def test_a_cell_run_in_two_experiments_counts_once_the_latest_run():
    trials = table(control(0, 1.0), control(1, 1.2), trial("a1", "A1", 0, 0.9),
                   control(0, 1.0, experiment=1), trial("a1", "A1", 0, 0.8, experiment=1))
    variants, _ = judge(trials)
    rows = variants.set_index("variant")
    assert rows.loc["p2p7p8", "seeds"] == 2 and rows.loc["p2p7p8", "seed_mse"] == "1.0000,1.2000"
    assert rows.loc["a1", "seeds"] == 1 and rows.loc["a1", "mse"] == 0.8
