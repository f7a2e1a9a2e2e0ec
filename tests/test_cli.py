"""``hmem run`` and ``hmem pretrain`` end to end, as a user calls them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from hmem.cli import main
from hmem.directions import Direction
from hmem.records import TrialMetrics

CONTROL = "search_spaces/control.yaml"
FAST = ["--set", "data.max_val_windows=40", "--set", "data.max_test_windows=120",
        "--set", "backbone.kind=nlinear", "--set", "pretrain.epochs=1",
        "--set", "chrc.memory.capacity=30", "--set", "chrc.feature_dim=16",
        "--set", "chrc.hidden_dim=32", "--set", "chrc.refiner_dim=32"]


def test_run_on_synthetic_writes_metrics_curve_and_config(tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    code = main(["run", CONTROL, "--variant", "p2p7p8", "--dataset", "synthetic", "--seed", "2",
                 "--out", str(out), "--cache-dir", str(cache_dir), *FAST])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("p2p7p8-synthetic-s2 [backbone=online@1e-06 chrc=on]: MSE ")
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mse", "mae", "rmse", "steps", "seconds_total", "ms_per_step", "regime",
                "backbone_key", "pretrain_seconds"):
        assert key in metrics
    # the file is the versioned record the analysis reads, and reads back as written
    record = TrialMetrics.read((out / "metrics.json").read_text(), "metrics.json")
    assert metrics["schema_version"] == TrialMetrics.SCHEMA_VERSION
    assert record.direction is Direction.CONTROL and record.acted == {}
    assert json.loads(record.to_json()) == metrics
    assert metrics["steps"] == 120 and metrics["seed"] == 2 and metrics["variant"] == "p2p7p8"
    assert metrics["rmse"] == pytest.approx(metrics["mse"] ** 0.5)
    curve = pd.read_csv(out / "curve.csv")
    assert len(curve) == 120 and curve["mse"].mean() == pytest.approx(metrics["mse"], rel=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 2 and config["backbone"]["online_lr_scale"] == 0.1


def test_run_on_truncated_ettm1(tmp_path, cache_dir, data_dir, capsys):
    out = tmp_path / "ettm1"
    code = main(["run", CONTROL, "--variant", "p2p7p8_frozen", "--dataset", "ETTm1",
                 "--data-dir", str(data_dir), "--out", str(out), "--cache-dir", str(cache_dir),
                 *FAST])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["regime"] == "backbone=frozen chrc=on" and metrics["steps"] == 120
    assert 0.1 < metrics["mse"] < 5 and metrics["dataset"] == "ETTm1"
    first_origin = pd.read_csv(out / "curve.csv")["forecast_origin"][0]
    assert first_origin == "2016-11-27 23:45:00"  # row 14399: 150 days of 15-minute rows in


def test_user_errors_exit_2_with_one_message(tmp_path, capsys):
    code = main(["run", CONTROL, "--variant", "p2p7p8", "--dataset", "synthetic",
                 "--set", "chrc.memory.capacity=0", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "chrc.memory.capacity: Input should be greater than or equal to 1 (got 0)" in err
    assert "Traceback" not in err
    assert main(["run", CONTROL, "--variant", "nope", "--dataset", "synthetic"]) == 2
    assert "no variant 'nope'" in capsys.readouterr().err


def test_pretrain_command_trains_once_then_loads(tmp_path, capsys):
    args = ["pretrain", CONTROL, "--dataset", "synthetic", "--cache-dir", str(tmp_path),
            "--set", "backbone.kind=nlinear", "--set", "pretrain.epochs=1"]
    assert main(args) == 0
    assert ": pretrained; best validation MSE" in capsys.readouterr().out
    assert main(args) == 0
    assert ": loaded from cache; best validation MSE" in capsys.readouterr().out
    assert main([*args, "--seed", "4"]) == 0
    assert ": pretrained;" in capsys.readouterr().out  # another seed is another backbone


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "hmem.cli", "run", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--variant" in result.stdout and "--set" in result.stdout


@pytest.mark.parametrize("command", [["tune", "launch"], ["campaign"]])
def test_commands_that_start_ray_keep_it_on_loopback(command, tmp_path):
    """Every command that starts its own Ray sets the loopback switch before Ray is imported
    (a campaign once imported Ray first, and its embedded instance took the outward address)."""
    probe = ("import os, sys; from hmem.cli import main; "
             f"code = main({[*command, str(tmp_path / 'missing.yaml')]!r}); "
             "print(code, 'ray' in sys.modules, os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=env, check=True)
    assert result.stdout.split() == ["2", "True", "0"], result.stdout + result.stderr


def test_reading_results_does_not_load_torch():
    """``hmem report`` and the notebook start ~2.5 s sooner without torch: what they import, and
    what Ray's saved experiment state names (the trial-name functions), stays free of it."""
    code = ("import sys, analysis.report, hmem.spaces, tune.naming; "
            "print(sorted(m for m in ('torch', 'scipy.signal') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
