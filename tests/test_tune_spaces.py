"""Search spaces as Ray Tune experiments: validation before anything starts, and the dry run."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmem.cli import main
from hmem.errors import ConfigError
from hmem.spaces import load_space

GOOD = """
name: s
base: {data: {dataset: synthetic, seq_len: 48, horizon: 12}, backbone: {kind: nlinear}}
datasets: {synthetic: {}}
variants: {a: {}, b: {chrc: {enabled: false}}}
seeds: [0, 1]
"""


def _write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("extra, message", [
    ("report_every: 300\ncheckpoint_every: 1000\n",
     r"space\.yaml: checkpoint_every must be a multiple of report_every, .*checkpoint_every=1000, report_every=300"),
    ("search: {kind: optuna}\n", r"an optuna search needs 'params'"),
    ("search: {kind: optuna, params: {online.lr: {type: loguniform, low: 1e-6, high: 1e-4}}}\n",
     r"an optuna search tunes one variant on one dataset; this space has variants \['a', 'b'\]"),
    ("search: {kind: grid, num_samples: 5}\n", r"'params' and 'num_samples' belong to kind: optuna"),
    ("resources: {cpu: 0}\n", r"resources\.cpu: Input should be greater than 0"),
    ("scheduler: {kind: hyperband}\n", r"scheduler\.kind: Input should be 'asha'"),
    ("max_concurrent: 0\n", r"max_concurrent: Input should be greater than or equal to 1"),
])
def test_malformed_tune_settings_are_refused_with_file_and_key(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_space(_write(tmp_path, GOOD + extra))
    assert "space.yaml" in str(err.value)


@pytest.mark.parametrize("params, message", [
    ("{online.lrr: {type: uniform, low: 0.1, high: 0.2}}", r"online\.lrr: unknown key"),
    ("{online.lr: {type: loguniform, low: 0, high: 1}}", r"loguniform range needs low > 0"),
    ("{online.lr: {type: uniform, low: 2, high: 1}}", r"'low' must be below 'high' \(low=2\.0, high=1\.0\)"),
    ("{chrc.memory.capacity: {type: int, low: 0, high: 10}}", r"chrc\.memory\.capacity: Input should be greater than or equal to 1 \(got 0\)"),
    ("{chrc.retrieval.aggregation: {type: choice, values: [softmax, median]}}", r"aggregation: Input should be 'softmax' or 'weighted_mean'"),
])
def test_optuna_ranges_are_checked_against_the_config_schema(tmp_path, params, message):
    text = GOOD.replace("variants: {a: {}, b: {chrc: {enabled: false}}}", "variants: {a: {}}")
    text += f"search: {{kind: optuna, num_samples: 4, params: {params}}}\n"
    with pytest.raises(ConfigError, match=message):
        load_space(_write(tmp_path, text))


def test_nothing_starts_when_the_space_is_bad(tmp_path, capsys, monkeypatch):
    import tune.launcher

    def connect(address):  # (an earlier test's embedded Ray may be up: watch the call itself)
        pytest.fail("a launch of a bad space connected to Ray")

    monkeypatch.setattr(tune.launcher, "connect", connect)
    path = _write(tmp_path, GOOD + "report_every: 7\ncheckpoint_every: 10\n")
    assert main(["tune", "launch", str(path), "--storage", str(tmp_path / "out")]) == 2
    assert "checkpoint_every must be a multiple of report_every" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_trials_resources_and_pretraining_runs(tmp_path, capsys):
    path = _write(tmp_path, GOOD + "resources: {cpu: 2, gpu: 0.25}\n")
    assert main(["tune", "launch", str(path), "--dry-run", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for label in ("a-synthetic-s0", "a-synthetic-s1", "b-synthetic-s0", "b-synthetic-s1"):
        assert label in out
    assert "4 trial(s); 1 pretraining run(s), one per distinct backbone" in out
    assert "   2 0.25" in out
    per_seed = _write(tmp_path, GOOD + "backbone_per_seed: true\n")
    assert main(["tune", "launch", str(per_seed), "--dry-run"]) == 0
    assert "4 trial(s); 2 pretraining run(s)" in capsys.readouterr().out


def test_plan_pretrains_one_backbone_per_dataset(data_dir, capsys):
    assert main(["tune", "launch", "search_spaces/control.yaml", "--dry-run",
                 "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "15 trial(s); 3 pretraining run(s), one per distinct backbone" in out


def test_resume_without_an_experiment_is_an_error(tmp_path, capsys):
    path = _write(tmp_path, GOOD)
    assert main(["tune", "launch", str(path), "--storage", str(tmp_path), "--resume"]) == 2
    assert "nothing to resume at" in capsys.readouterr().err


def test_submit_sends_the_launch_with_the_project_as_working_dir(monkeypatch, capsys):
    import tune.submit

    submitted = {}

    class FakeClient:  # Ray's job client, recorded instead of contacting a cluster
        def __init__(self, address):
            submitted["address"] = address

        def submit_job(self, entrypoint, runtime_env):
            submitted.update(entrypoint=entrypoint, runtime_env=runtime_env)
            return "raysubmit_123"

    monkeypatch.setattr(tune.submit, "JobSubmissionClient", FakeClient)
    code = main(["tune", "submit", "search_spaces/quickstart.yaml", "--address",
                 "http://127.0.0.1:8265", "--storage", "/shared/results", "--set",
                 "online.lr=2e-5", "--seeds", "2,3", "--pip"])
    assert code == 0
    assert submitted["address"] == "http://127.0.0.1:8265"
    assert submitted["entrypoint"] == (
        "python -m hmem.cli tune launch search_spaces/quickstart.yaml --storage /shared/results "
        "--set online.lr=2e-5 --seeds 2,3 --address auto")
    env = submitted["runtime_env"]
    assert Path(env["working_dir"], "hmem", "cli.py").is_file()
    assert ".venv" in env["excludes"] and "*.csv.gz" in env["excludes"]
    assert "optuna==5.0.0" in env["pip"] and all(not p.startswith("#") for p in env["pip"])
    out = capsys.readouterr().out
    assert "submitted job raysubmit_123" in out
    assert "ray job logs --follow raysubmit_123 --address http://127.0.0.1:8265" in out


def test_every_shipped_space_loads_and_plans(data_dir, capsys):
    spaces = sorted(Path("search_spaces").glob("*.yaml"))
    assert {p.stem for p in spaces} >= {"quickstart", "control", "a1", "a2", "b1", "b2", "b3",
                                        "s3", "plan", "optuna_example"}
    for path in spaces:
        assert main(["tune", "launch", str(path), "--dry-run", "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    assert main(["tune", "launch", "search_spaces/plan.yaml", "--dry-run",
                 "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert ("80 trial(s); 2 pretraining run(s), one per distinct backbone; 2 contrastive "
            "encoder pretraining(s)") in out
    plan = load_space("search_spaces/plan.yaml")
    # the strongest simple baseline is there: the backbone alone at 1e-5 and a small lr sweep
    lrs = {v: plan.trial_config(v, "ETTm1").regime for v in plan.variants if v.startswith("online")}
    assert lrs == {"online_slow": "backbone=online@1e-06 chrc=off",
                   "online_lr3e-6": "backbone=online@3e-06 chrc=off",
                   "online": "backbone=online@1e-05 chrc=off",
                   "online_lr3e-5": "backbone=online@3e-05 chrc=off"}
    regimes = {v: plan.trial_config(v, "ETTm1").regime for v in ("b3", "b3_frozen", "a1_base")}
    assert regimes == {"b3": "backbone=online@1e-06 chrc=on",
                       "b3_frozen": "backbone=frozen chrc=on",
                       "a1_base": "backbone=online@1e-06 chrc=on snma=on"}


def test_extends_takes_the_parent_and_picks_its_datasets(tmp_path):
    (tmp_path / "parent.yaml").write_text(GOOD.replace(
        "datasets: {synthetic: {}}",
        "datasets: {synthetic: {data: {max_test_windows: 50}}, other: {data: {dataset: synthetic}}}"))
    (tmp_path / "child.yaml").write_text("""
name: child
extends: parent.yaml
base: {online: {lr: 3.0e-5}}
datasets: {synthetic: {online: {warmup: false}}}
variants: {c: {}}
""")
    child = load_space(tmp_path / "child.yaml")
    assert list(child.datasets) == ["synthetic"] and list(child.variants) == ["c"]
    cfg = child.trial_config("c", "synthetic")
    assert cfg.online.lr == 3e-5 and cfg.data.seq_len == 48  # base merged key by key
    assert cfg.data.max_test_windows == 50 and not cfg.online.warmup  # dataset entry merged
    assert child.seeds == [0, 1]  # inherited
    (tmp_path / "loop.yaml").write_text("name: loop\nextends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends loop.yaml in a loop"):
        load_space(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("name: o\nextends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml: no such search-space file \(extended by"):
        load_space(tmp_path / "orphan.yaml")


def test_part_of_a_space_runs_with_the_whole_files_configs(tmp_path, capsys):
    path = _write(tmp_path, GOOD.replace("variants: {a: {}, b: {chrc: {enabled: false}}}",
                                         "variants: {a: {}, b: {chrc: {enabled: false}}, c: {}}"))
    whole = load_space(path)
    part = whole.select(variants=["c", "b"], seeds=[5])
    assert [cell.label() for cell in part.cells()] == ["b-synthetic-s5", "c-synthetic-s5"]
    assert part.trial_config("b", "synthetic", 5) == whole.trial_config("b", "synthetic", 5)

    assert main(["tune", "launch", str(path), "--dry-run", "--variants", "b",
                 "--seeds", "0,7"]) == 0
    out = capsys.readouterr().out
    assert "b-synthetic-s0" in out and "b-synthetic-s7" in out and "a-synthetic" not in out
    assert "2 trial(s)" in out

    assert main(["tune", "launch", str(path), "--dry-run", "--variants", "b,zz"]) == 2
    assert "space.yaml: no variant 'zz'; this space has a, b, c" in capsys.readouterr().err
    assert main(["tune", "launch", str(path), "--dry-run", "--datasets", "ETTm1"]) == 2
    assert "no dataset 'ETTm1'; this space has synthetic" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tune", "launch", str(path), "--seeds", "0,one"])
    assert "expected comma-separated integers, got '0,one'" in capsys.readouterr().err
    assert main(["tune", "launch", str(path), "--storage", str(tmp_path), "--resume",
                 "--seeds", "3"]) == 2
    assert "--resume continues the saved one as launched" in capsys.readouterr().err


def test_a_search_that_may_freeze_the_backbone_plans_its_base_forecasts(tmp_path):
    """Optuna sampling backbone.online_lr_scale from [0, 0.2] can draw a frozen backbone, whose
    trial reads the base forecasts: they must be shipped with the backbone."""
    from tune.artefacts import plan_backbones
    from tune.launcher import trial_configs

    text = GOOD.replace("variants: {a: {}, b: {chrc: {enabled: false}}}",
                        "variants: {a: {backbone: {online_lr_scale: 0.1}}}")
    sampled = "search: {kind: optuna, num_samples: 2, params: {backbone.online_lr_scale: {type: uniform, low: %s, high: 0.2}}}\n"
    space = load_space(_write(tmp_path, text + sampled % 0.0))
    assert space.may_sample("backbone.online_lr_scale", 0.0)
    configs = trial_configs(space, {})
    plans = plan_backbones(configs, None, may_freeze=True)
    assert all(plan.needs_base_forecasts for plan in plans.values())
    assert not any(p.needs_base_forecasts for p in plan_backbones(configs, None).values())
    never_frozen = load_space(_write(tmp_path, text + sampled % 0.05))
    assert not never_frozen.may_sample("backbone.online_lr_scale", 0.0)


def test_a_plan_whose_artefacts_are_cached_leaves_the_cpus_to_those_that_train(tmp_path, tiny,
                                                                                cache_dir):
    """Pretraining tasks share the cluster's CPUs among the plans that build something; a plan
    found in the cache (backbone, base forecasts, B2 encoders) only loads."""
    from hmem.data import prepare
    from hmem.trial import TrialArtefacts
    from tune.artefacts import plan_backbones

    cfg = tiny({"backbone": {"online_lr_scale": 0.0}, "chrc": {"contrastive": {
        "enabled": True, "epochs": 1}}})
    plan = next(iter(plan_backbones({"t": cfg}, None).values()))
    assert plan.needs_base_forecasts and plan.encoders
    assert not plan.cached(tmp_path / "empty")
    TrialArtefacts.load_or_build(cfg, None, cache_dir, data=prepare(cfg.data))
    assert plan.cached(cache_dir)
