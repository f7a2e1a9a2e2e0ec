"""Searches on real Ray, on 127.0.0.1 only: the quickstart end to end, a trial whose worker is
killed, a driver that is killed, and Optuna with ASHA (clusters: ``test_cluster.py``).

Each Ray instance a test starts is stopped by the handles the test holds (``ray.shutdown()``,
the process groups of the ``ray start`` and ``hmem`` processes it launched), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import torch
from processes import stop_group

from analysis.loading import load_trials
from hmem.artefacts import load_or_pretrain
from hmem.data import prepare
from hmem.online import run_trial
from hmem.spaces import Cell, load_space
from tune.launcher import LaunchOptions, Selection, format_report, launch
from tune.ray_api import unfinished_trials

REPO = Path(__file__).resolve().parents[1]
HMEM = [sys.executable, "-m", "hmem.cli"]


def _json_or_none(text: str):
    """A file that Ray is still writing (polled while a search runs) reads as not there yet."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _trials(experiment: Path) -> dict[str, Path]:
    """Trial label (``variant-dataset-sSEED``, plus the folder for sampled trials) -> folder."""
    trials = {}
    for folder in experiment.iterdir():
        path = folder / "params.json"
        params = _json_or_none(path.read_text()) if path.exists() else None
        if params is not None:
            label = Cell(**params["cell"]).label()
            trials[f"{label}#{folder.name}" if "sampled" in params else label] = folder
    return trials


def _results(folder: Path) -> list[dict]:
    """The rows of ``result.json`` written so far (a last line still being written is left out)."""
    path = folder / "result.json"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    last = _json_or_none(lines[-1]) if lines else None
    return [json.loads(line) for line in lines[:-1]] + ([last] if last is not None else [])


def _hmem_run_mse(space_path, variant, seed, cache_dir, overrides=None) -> float:
    space = load_space(space_path)
    cfg = space.trial_config(variant, next(iter(space.datasets)), seed, overrides)
    data = prepare(cfg.data)
    torch.set_num_threads(cfg.runtime.threads)
    return run_trial(cfg, data, load_or_pretrain(cfg, data, cache_dir)).metrics["mse"]


def _space(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + body)
    return path


SMALL = """
base:
  data: {dataset: synthetic, seq_len: 48, horizon: 12, max_val_windows: 100,
         max_test_windows: 1000, synthetic: {rows: 4000, variables: 3}}
  backbone: {kind: nlinear}
  pretrain: {epochs: 2}
  chrc: {feature_dim: 32, hidden_dim: 64, refiner_dim: 64, memory: {capacity: 200}}
  online: {lr: 1.0e-4}
datasets: {synthetic: {}}
"""


def _spawn(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*HMEM, *args], cwd=REPO, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process ended (exit {process.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


# ----------------------------------------------------------------------------- quickstart


#: The quickstart as shipped, on the first part of its test stream (``--set`` as a user would):
#: what the README's demo runs, at a quarter of the cost.
QUICK_WINDOWS = 750


def test_quickstart_end_to_end(tmp_path, cache_dir, embedded_ray):
    space = REPO / "search_spaces" / "quickstart.yaml"
    shorter = {"data": {"max_test_windows": QUICK_WINDOWS}}
    report = launch(space, LaunchOptions(storage=str(tmp_path), cache_dir=str(cache_dir),
                                         overrides=shorter))
    assert report.trials == 8 and report.errored == 0 and report.backbones == 1
    experiment = Path(report.experiment_path)

    # Ray's own loader reads the experiment; every trial finished with the full stream scored
    analysis = ray.tune.ExperimentAnalysis(str(experiment))
    assert {trial.status for trial in analysis.trials} == {"TERMINATED"}
    frame = analysis.dataframe()
    assert len(frame) == 8 and (frame["scored"] == QUICK_WINDOWS).all()
    trials = _trials(experiment)
    assert len(trials) == 8
    for label, folder in trials.items():
        metrics = json.loads((folder / "metrics.json").read_text())
        assert label == f"{metrics['variant']}-synthetic-s{metrics['seed']}"
        assert metrics["backbone_source"] == "object_store"
        assert len(pd.read_csv(folder / "curve.csv")) == metrics["steps"] == QUICK_WINDOWS
        assert json.loads((folder / "config.json").read_text())["seed"] == metrics["seed"]
        assert list((folder / "tensorboard").glob("events.out.tfevents.*"))  # per-window curve
        assert list(folder.glob("events.out.tfevents.*"))  # Tune's running metrics
    # a finished trial's worker process takes the next trial (no second start-up of torch), and
    # the numbers stay those of a fresh process (below)
    workers = {row["pid"] for folder in trials.values() for row in _results(folder)}
    assert len(workers) < 8

    # each trial gives exactly what `hmem run` gives for the same variant and seed
    for variant, seed in [("online_slow", 1), ("p2p7p8", 0)]:  # a baseline, a corrector
        tuned = json.loads((trials[f"{variant}-synthetic-s{seed}"] / "metrics.json").read_text())
        assert tuned["mse"] == _hmem_run_mse(space, variant, seed, cache_dir, shorter), variant
    assert [row["variant"] for row in report.best] == ["p2p7p8"]

    # the analysis reads the same experiment: a report with the control's verdict and figures
    from analysis.report import write_report

    analysis = write_report([experiment], tmp_path / "quickstart.html")
    assert (analysis.trials["valid"]).all() and len(analysis.trials) == 8
    controls = analysis.verdicts.query("direction == 'control'").set_index("best_variant")
    assert sorted(controls.index) == ["p2p7p8", "p2p7p8_frozen"]  # one row per regime
    # each control is compared with the CHRC-free baseline of its own backbone regime
    assert controls.loc["p2p7p8", "best_baseline"] == "online_slow"
    assert controls.loc["p2p7p8_frozen", "best_baseline"] == "frozen"
    page = (tmp_path / "quickstart.html").read_text()
    assert "p2p7p8_frozen" in page and "data:image/png;base64," in page
    # its reproduce section launches into the same storage, where the report command reads it
    assert analysis.commands[0] == ("hmem tune launch search_spaces/quickstart.yaml --name "
                                    f"{experiment.name} --storage {tmp_path} "
                                    f"--set data.max_test_windows={QUICK_WINDOWS}")


# ----------------------------------------------------------------------------- resume


def test_a_killed_trial_resumes_from_its_checkpoint_with_the_same_mse(tmp_path, cache_dir):
    space = _space(tmp_path, "killtrial", SMALL + """
variants: {p2p7p8_frozen: {}}
report_every: 100
checkpoint_every: 200
max_failures: 2
""")
    storage = tmp_path / "out"
    driver = _spawn(["tune", "launch", str(space), "--storage", str(storage),
                     "--cache-dir", str(cache_dir)], tmp_path / "driver.log")
    try:
        experiment = storage / "killtrial"

        def checkpointed_pid():
            for folder in _trials(experiment).values() if experiment.exists() else []:
                rows = _results(folder)
                if rows and rows[-1]["windows"] >= 400:  # past the first two checkpoints
                    return rows[-1]["pid"], folder
            return None

        pid, folder = _wait_for(checkpointed_pid, 240, "the trial's second checkpoint", driver)
        os.kill(pid, signal.SIGKILL)
        assert driver.wait(300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        stop_group(driver)
    rows = _results(folder)
    pids = list(dict.fromkeys(row["pid"] for row in rows))
    assert len(pids) == 2 and pids[0] == pid  # it ran in two worker processes...
    restarted = [row["windows"] for row in rows if row["pid"] == pids[1]]
    assert restarted[0] > 200  # ...and the second went on from a checkpoint, not from scratch
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["mse"] == _hmem_run_mse(space, "p2p7p8_frozen", 0, cache_dir)


def test_an_interrupted_experiment_resumes_without_rerunning_finished_trials(tmp_path,
                                                                           cache_dir):
    # longer trials: the third must outlast the poll that interrupts the search
    longer = SMALL.replace("max_test_windows: 1000", "max_test_windows: 2000")
    space = _space(tmp_path, "killdriver", longer + """
variants: {p2p7p8_frozen: {}, online_slow: {chrc: {enabled: false}, backbone: {online_lr_scale: 0.1}}}
seeds: [0, 1]
max_concurrent: 1
report_every: 200
checkpoint_every: 400
""")
    storage = tmp_path / "out"
    args = ["tune", "launch", str(space), "--storage", str(storage), "--cache-dir", str(cache_dir)]
    driver = _spawn(args, tmp_path / "first.log")
    experiment = storage / "killdriver"

    def terminated():  # as the experiment's own state records them
        if len(list(experiment.glob("*/metrics.json"))) < 2:  # cheap, polled: no state to read
            return None
        try:
            trials = ray.tune.ExperimentAnalysis(str(experiment)).trials
        except Exception:  # the state file is being rewritten
            return None
        return [trial for trial in trials if trial.status == "TERMINATED"]

    try:
        _wait_for(lambda: len(terminated() or []) >= 2, 240, "two finished trials", driver)
        os.kill(driver.pid, signal.SIGINT)  # Ctrl+C: Tune saves its state and returns
        assert driver.wait(120) == 1  # an interrupted search is not a success
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # whatever of its Ray is left
        driver.wait(30)
    finished = terminated()
    assert 2 <= len(finished) < 4
    # Ray's result grid calls every trial of an interrupted search TERMINATED; the report must not
    assert (f"interrupted: {4 - len(finished)} trial(s) not finished"
            in (tmp_path / "first.log").read_text())
    # the count reads the saved state (trials Tune created), from relative paths too
    created = len(ray.tune.ExperimentAnalysis(str(experiment)).trials)
    assert unfinished_trials(os.path.relpath(experiment)) == created - len(finished) >= 1
    folders = _trials(experiment)
    labels = [Cell(**trial.config["cell"]).label() for trial in finished]
    table = load_trials([experiment])  # what a report of the interrupted experiment shows
    assert len(table) == 4 and table["valid"].sum() == len(finished)
    assert set(table.loc[~table["valid"], "note"]) <= {"not finished (pending or running)",
                                                       "not started"}
    before = {label: (folders[label] / "metrics.json").stat().st_mtime_ns for label in labels}

    resumed = _spawn([*args, "--resume"], tmp_path / "second.log")
    try:
        assert resumed.wait(400) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        stop_group(resumed)
    trials = _trials(experiment)
    assert len(trials) == 4 and all((f / "metrics.json").exists() for f in trials.values())
    for label, mtime in before.items():
        assert (trials[label] / "metrics.json").stat().st_mtime_ns == mtime, label  # not re-run


# ----------------------------------------------------------------------------- optuna


OPTUNA = SMALL + """
variants: {p2p7p8_frozen: {}}
search:
  kind: optuna
  num_samples: 4
  seed: 3
  params:
    online.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}
    chrc.retrieval.top_k: {type: int, low: 2, high: 8}
scheduler: {kind: asha, grace_period: 2, max_t: 100}
max_concurrent: 2
report_every: 200
checkpoint_every: 400
"""


def test_optuna_search_with_asha(tmp_path, cache_dir, embedded_ray):
    space = _space(tmp_path, "optuna", OPTUNA)
    report = launch(space, LaunchOptions(storage=str(tmp_path), cache_dir=str(cache_dir)))
    assert report.trials == 4 and report.errored == 0
    trials = _trials(Path(report.experiment_path))
    sampled = {label: json.loads((f / "params.json").read_text())["sampled"]
               for label, f in trials.items()}
    assert len(sampled) == 4
    lrs = [s["online.lr"] for s in sampled.values()]
    assert len(set(lrs)) == 4 and all(1e-5 <= lr <= 1e-3 for lr in lrs)  # Optuna sampled them
    assert all(2 <= s["chrc.retrieval.top_k"] <= 8 for s in sampled.values())
    completed = {label: f for label, f in trials.items() if (f / "metrics.json").exists()}
    assert completed  # at least the best one streamed to the end (ASHA may stop others)
    for label, folder in completed.items():  # ...and ran exactly what was sampled for it
        config = json.loads((folder / "config.json").read_text())
        assert config["online"]["lr"] == sampled[label]["online.lr"]
        assert config["chrc"]["retrieval"]["top_k"] == sampled[label]["chrc.retrieval.top_k"]


# ----------------------------------------------------------------------------- futility


def test_futility_stopping_ends_a_variant_that_cannot_gain_and_records_where(
        tmp_path, cache_dir, embedded_ray):
    """A1 with beta 0 forecasts exactly as its control: with stopping on, the stopper ends it at
    the first look, its metrics.json says where and why, and the verdict reads it."""
    from analysis.rules import variant_table, verdicts
    from hmem.records import TrialMetrics

    body = SMALL + "variants:\n  p2p7p8: {}\n  a1_zero: {snma: {enabled: true, beta: 0.0}}\n" \
                   "seeds: [0]\nreport_every: 100\ncheckpoint_every: 500\n"
    storage = str(tmp_path / "out")
    control = launch(_space(tmp_path, "ctl", body), LaunchOptions(
        storage=storage, cache_dir=str(cache_dir), selection=Selection(variants=["p2p7p8"])))
    stopping = (f"stopping: {{enabled: true, controls: [{control.experiment_path}]}}\n")
    variant = launch(_space(tmp_path, "var", body + stopping), LaunchOptions(
        storage=storage, cache_dir=str(cache_dir), selection=Selection(variants=["a1_zero"])))
    assert variant.errored == 0
    folder = next(iter(_trials(Path(variant.experiment_path)).values()))
    metrics = TrialMetrics.read((folder / "metrics.json").read_text(), "metrics.json")
    stop = metrics.stopped_early
    assert stop is not None and stop.look == 0 and abs(stop.gain) < 1e-6 and stop.bound < 0.005
    assert stop.window == -(-stop.of // 4) and metrics.steps < stop.of  # ended at 25 %
    last = _results(folder)[-1]
    assert last["futility/stop"] is True and last["windows"] == metrics.steps
    curve = pd.read_csv(folder / "curve.csv")
    assert stop.window <= len(curve) < stop.of

    trials = load_trials([control.experiment_path, variant.experiment_path])
    row = trials.set_index("variant").loc["a1_zero"]
    assert row["stopped"] and row["valid"] and row["stopped_window"] == stop.window
    table = variant_table(trials)
    judged = verdicts(table).set_index("direction").loc["A1"]
    assert judged["verdict"].startswith(f"ineffective (stopped at {stop.window} of {stop.of} "
                                        "windows, gain ")
    assert judged["gain"] == stop.gain and pd.isna(judged["mse"])  # a part-stream MSE: not shown


def test_tuning_on_validation_never_streams_the_test_segment(tmp_path, cache_dir, embedded_ray):
    """A tuned control is chosen on the warm-up (validation) MSE only: with
    ``online.test_stream: false`` every trial stops after the warm-up, reports its running
    validation MSE (which ASHA and Optuna read), and has no test score at all."""
    tuning = (OPTUNA.replace("{p2p7p8_frozen: {}}", "{p2p7p8: {online: {test_stream: false}}}")
              .replace("  kind: optuna\n", "  kind: optuna\n  metric: warmup_mse\n")
              .replace("report_every: 200\ncheckpoint_every: 400", "report_every: 20\n"
                       "checkpoint_every: 100"))
    assert tuning.count("warmup_mse") == 1 and tuning.count("test_stream") == 1
    space = _space(tmp_path, "tuning", tuning)
    report = launch(space, LaunchOptions(storage=str(tmp_path), cache_dir=str(cache_dir)))
    assert report.trials == 4 and report.errored == 0
    best = report.best[0]
    assert best["variant"] == "p2p7p8" and best["warmup_mse"] > 0
    printed = format_report(report)  # what the command line prints
    assert f"warmup_mse {best['warmup_mse']:.4f}" in printed
    assert f"--set online.lr={best['sampled']['online.lr']!r}" in printed
    trials = _trials(Path(report.experiment_path))
    finished = [f for f in trials.values() if (f / "metrics.json").exists()]
    scores = [json.loads((f / "metrics.json").read_text()) for f in finished]
    assert finished and all(m["steps"] == 0 for m in scores)  # not one test window
    assert best["warmup_mse"] == min(m["warmup_mse"] for m in scores)
    for folder in trials.values():
        results = _results(folder)
        assert results and all("warmup_mse" in r and r["windows"] == 0 for r in results)
    loaded = load_trials([report.experiment_path])
    assert not loaded["valid"].any()
    assert loaded["note"].str.startswith("validation only").all()
    # the report's tuning section (hmem report --tuning) shows what was selected, and on what
    from analysis.report import tuning_note, tuning_table

    table = tuning_table(loaded)
    assert table["warmup_mse"].iloc[0] == f"{best['warmup_mse']:.5f}"
    assert table["online.lr"].iloc[0] == f"{best['sampled']['online.lr']:.4g}"
    assert (f"Selected: validation MSE {best['warmup_mse']:.5f}, "
            f"online.lr={best['sampled']['online.lr']:.4g}") in tuning_note(loaded)
