"""A real staged campaign on the embedded Ray (127.0.0.1), interrupted and resumed, and the
analysis of its experiment folders: loading, the report in HTML and Markdown, failed and NaN
trials, and the notebook executed headless.

The space is built so that the rules' outcome is known: A1 with ``beta: 0`` gives exactly the
control's forecasts (a gain of 0), so its first two experiments make A1 ineffective, the rest of
its sweep must not run, and A2's gate (A1 gained) and S3's (an A gained) must stay closed.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.loading import load_trials
from hmem.spaces import load_space
from tune.campaign import CampaignOptions, run_campaign
from tune.launcher import launch

REPO = Path(__file__).resolve().parents[1]

SPACE = """name: tinyplan
base:
  data: {dataset: synthetic, seq_len: 48, horizon: 12, max_val_windows: 60,
         max_test_windows: 300, synthetic: {rows: 3000, variables: 3}}
  backbone: {kind: nlinear}
  pretrain: {epochs: 2}
  chrc: {feature_dim: 16, hidden_dim: 24, refiner_dim: 32, gate_dim: 8,
         memory: {capacity: 60, min_entries: 8}, retrieval: {top_k: 4, attention_heads: 2},
         buckets: {count: 2}}
  snma: {memory_dim: 16}
  online: {lr: 1.0e-3}
datasets: {synthetic: {}}
variants:
  frozen: {chrc: {enabled: false}}
  p2p7p8: {}
  a1_zero: {snma: {enabled: true, beta: 0.0}}
  a1_zero_b: {snma: {enabled: true, beta: 0.0, lr_scale: 2.0}}
  a1_sweep: {snma: {enabled: true, beta: 0.3}}
  a2: {snma: {enabled: true, beta: 0.1, enhance_query: true, gamma: 0.1}}
  b1_bilinear: {chrc: {retrieval: {similarity: bilinear}}}
  b3: {chrc: {retrieval: {mode: attention}}}
seeds: [0, 1]
report_every: 100
checkpoint_every: 100
"""


class Interrupt(Exception):
    """Stands for the driver being stopped between two stages."""


def _results(experiment: Path) -> dict[str, str]:
    return {f.name: (f / "result.json").read_text() for f in experiment.iterdir()
            if (f / "result.json").exists()}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, cache_dir, embedded_ray):
    root = tmp_path_factory.mktemp("campaign")
    space = root / "tinyplan.yaml"
    space.write_text(SPACE)
    # every window runs here (the rules' arithmetic below is exact); futility stopping in a
    # campaign: test_gates_open_and_a_single_seed_gets_reproduced
    options = CampaignOptions(storage=str(root / "out"), cache_dir=str(cache_dir),
                              stopping=False)
    calls = []

    def stop_after_first_stage(path, launch_options):
        calls.append(launch_options.name)
        if len(calls) == 2:
            raise Interrupt
        return launch(path, launch_options)

    folder = root / "out" / "tinyplan"
    with pytest.raises(Interrupt):
        run_campaign(space, options, launcher=stop_after_first_stage)
    first_s0 = _results(folder / "S0")
    with pytest.raises(Exception, match="already holds a campaign"):
        run_campaign(space, options)
    report = run_campaign(space, CampaignOptions(
        storage=str(root / "out"), cache_dir=str(cache_dir), resume=True, stopping=False))
    return {"folder": folder, "report": report, "first_s0": first_s0, "space": space}


def _stages(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if (p / "hmem_launch.json").exists())


def test_the_campaign_applies_the_rules_between_stages(campaign):
    folder = campaign["folder"]
    log = (folder / "campaign.log").read_text()
    assert "A1 on synthetic: ineffective (a1_zero -> a1_zero_b each gain < 0.5%); a1_sweep " \
           "not run" in log
    assert "gate A2 on synthetic: closed (A1 is ineffective on synthetic" in log
    assert "gate S3 on synthetic: closed (no A" in log
    stages = _stages(folder)
    # the first experiments of A1, B1 and B3 depend on S0 alone: they shared one stage
    assert "S0" in stages and "directions-first" in stages and "A1-first" not in stages
    firsts = set(load_trials([folder / "directions-first"])["variant"])
    assert firsts == {"a1_zero", "a1_zero_b", "b1_bilinear", "b3"}
    # the baseline gives the same numbers on every seed: it ran whole once, beside the
    # control's third seed
    s0_seeds = load_trials([folder / "S0-seeds"])
    assert set(zip(s0_seeds["variant"], s0_seeds["seed"])) == {("frozen", 2), ("p2p7p8", 2)}
    assert set(load_trials([folder / "S0"])["variant"]) == {"p2p7p8"}
    assert not (folder / "S0-frozen").exists()
    ran = {v for v in load_trials([folder / s for s in stages])["variant"]}
    assert "a1_sweep" not in ran and "a2" not in ran
    # B directions: a best variant that gained without reproducing got extra seeds
    trials = load_trials([folder / s for s in stages])
    for stage in stages:
        if "-repro-" in stage:
            seeds = set(trials[trials["experiment"] == stage]["seed"])
            assert seeds == {2, 3} and "needs reproduction" in log
    assert campaign["report"] == folder / "report.html" and campaign["report"].exists()


def test_a_resumed_campaign_keeps_the_stages_it_finished(campaign):
    folder = campaign["folder"]
    log = (folder / "campaign.log").read_text()
    assert "resuming campaign tinyplan" in log and "S0: resuming" in log
    assert _results(folder / "S0") == campaign["first_s0"]  # not one S0 trial ran again


def test_loading_gives_one_row_per_trial_with_identity_config_and_metrics(campaign):
    folder = campaign["folder"]
    stages = [folder / s for s in _stages(folder)]
    trials = load_trials(stages)
    folders = sum(len(_results(s)) for s in stages)
    assert len(trials) == folders and trials["valid"].all()
    assert set(trials["status"]) == {"TERMINATED"}
    assert {"experiment", "stage", "direction", "variant", "dataset", "seed", "backbone_key",
            "mse", "wall_s", "cfg.snma.beta", "cfg.chrc.retrieval.mode"} <= set(trials.columns)
    by_variant = trials.drop_duplicates("variant").set_index("variant")
    assert by_variant.loc["frozen", "direction"] == "baseline"
    assert by_variant.loc["a1_zero", "stage"] == "S1" and by_variant.loc["b3", "stage"] == "S2"
    assert trials["backbone_key"].nunique() == 1  # one backbone for the whole campaign
    # beta 0: exactly the control's numbers, seed by seed
    mse = trials.set_index(["variant", "seed"])["mse"]
    assert mse[("a1_zero", 0)] == mse[("p2p7p8", 0)] and mse[("a1_zero", 1)] == mse[("p2p7p8", 1)]


def test_hmem_report_writes_html_and_markdown(campaign, tmp_path):
    folder = campaign["folder"]
    stages = [str(folder / s) for s in _stages(folder)]
    html_out, md_out = tmp_path / "r.html", tmp_path / "r.md"
    for out in (html_out, md_out):
        done = subprocess.run([sys.executable, "-m", "hmem.cli", "report", *stages, "--out",
                               str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    page = html_out.read_text()
    assert "<h2>Verdicts</h2>" in page and page.count("data:image/png;base64,") >= 3
    for variant in ("p2p7p8", "a1_zero", "b1_bilinear", "b3"):
        assert variant in page
    text = md_out.read_text()
    assert "| direction" in text and "ineffective (a1_zero -> a1_zero_b" in text
    figures = sorted((tmp_path / "r_files").glob("*.png"))
    assert len(figures) >= 3 and all(f"r_files/{f.name}" in text for f in figures)
    # the commands that reproduce it: the campaign once (not its stages), then the report
    block = text[text.index("```bash\n", text.index("## Reproduce")) + 8:]
    block = block[:block.index("\n```")].splitlines()
    assert block == [f"hmem campaign {campaign['space']} --storage {folder.parent}",
                     shlex.join(["hmem", "report", *stages, "--out", str(md_out)])]


def _report(experiments: list[str], out: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "hmem.cli", "report", *experiments, "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out.read_text()


def test_a_report_on_the_campaign_folder_covers_its_stages_and_says_if_it_finished(campaign,
                                                                                   tmp_path):
    folder = campaign["folder"]
    stages = [str(folder / s) for s in _stages(folder)]
    text = _report([str(folder)], tmp_path / "whole.md")
    assert f"from {len(load_trials(stages))} trial(s)" in text
    assert "Campaign tinyplan" in text and " finished at " in text and "NOT finished" not in text
    decisions = text[text.index("## Decisions of campaign tinyplan\n"):]
    assert "gate S3 on synthetic: closed" in decisions and "finished: every stage" in decisions
    # the same campaign as it stood when S0-seeds had just started: a report published half-way
    log = (folder / "campaign.log").read_text().splitlines()
    cut = next(i for i, line in enumerate(log) if "S0-seeds: running" in line)
    partial = tmp_path / "runs" / "tinyplan"
    partial.mkdir(parents=True)
    (partial / "campaign.log").write_text("\n".join(log[:cut + 1]) + "\n")
    started = list(dict.fromkeys(line.split()[1].rstrip(":") for line in log[:cut + 1]
                                 if ": running" in line or ": resuming" in line))
    for stage in started:
        shutil.copytree(folder / stage, partial / stage)
    text = _report([str(partial)], tmp_path / "partial.md")
    assert "has NOT finished" in text and "Decisions of campaign tinyplan (not finished)" in text
    assert f"from {len(load_trials([partial / s for s in started]))} trial(s)" in text
    assert started[-1] == "S0-seeds" and "| b3 " not in text  # no direction had started


def test_the_campaign_log_lists_each_stage_once_and_a_resume_reopens_it(tmp_path):
    from analysis.campaign_log import expand, read_campaign

    folder = tmp_path / "plan"
    folder.mkdir()
    (folder / "campaign.log").write_text(
        "2026-12-01T01:00:00 starting campaign plan from search_spaces/plan.yaml\n"
        "2026-12-01T01:00:01 S0: running p2p7p8 on ETTm1, seeds [0, 1]\n"
        "2026-12-01T02:00:00 S0: interrupted with 1 of 2 trials unfinished; the campaign stops\n"
        "2026-12-01T03:00:00 resuming campaign plan from search_spaces/plan.yaml\n"
        "2026-12-01T03:00:01 S0: resuming p2p7p8 on ETTm1, seeds [0, 1]\n"
        "2026-12-01T04:00:00 A1 on ETTm1: ineffective (a1_base -> a1_beta0.05 each gain < 0.5%)\n"
        "2026-12-01T04:00:01 A1-first: running a1_base, a1_beta0.05 on ETTm1, seeds [0, 1]\n")
    (folder / "S0").mkdir()  # A1-first has not written its folder yet
    campaign = read_campaign(folder)
    assert campaign.stages == ("S0", "A1-first") and not campaign.finished
    assert campaign.space == "search_spaces/plan.yaml" and len(campaign.decisions) == 7
    assert expand([folder, folder / "S0"]) == [str(folder / "S0")]
    assert "has NOT finished" in campaign.status() and "04:00:01" in campaign.status()
    with (folder / "campaign.log").open("a") as log:
        log.write("2026-12-01T05:00:00 finished: every stage has run\n")
    assert read_campaign(folder).finished
    with (folder / "campaign.log").open("a") as log:
        log.write("2026-12-01T06:00:00 resuming campaign plan from search_spaces/plan.yaml\n")
    assert not read_campaign(folder).finished  # resumed: a further stage may run
    assert read_campaign(tmp_path) is None and expand([tmp_path / "x"]) == [str(tmp_path / "x")]


def test_failed_and_nan_trials_are_listed_and_never_counted(campaign, tmp_path):
    copy = tmp_path / "directions-first"  # eight trials: four variants, two seeds
    shutil.copytree(campaign["folder"] / "directions-first", copy)
    trial_dirs = sorted(d for d in copy.iterdir() if (d / "metrics.json").exists())
    nan_metrics = json.loads((trial_dirs[0] / "metrics.json").read_text())
    nan_metrics["mse"] = float("nan")
    (trial_dirs[0] / "metrics.json").write_text(json.dumps(nan_metrics))
    (trial_dirs[1] / "metrics.json").unlink()
    newer = json.loads((trial_dirs[2] / "metrics.json").read_text())
    (trial_dirs[2] / "metrics.json").write_text(json.dumps({**newer, "schema_version": 99}))
    trials = load_trials([copy])
    invalid = trials[~trials["valid"]].set_index("trial_path")["note"]
    assert invalid[str(trial_dirs[0])] == "non-finite mse (nan)"
    assert invalid[str(trial_dirs[1])].startswith("no metrics.json")
    # an unreadable file costs its own row only, and says which file and what is wrong
    assert invalid[str(trial_dirs[2])] == (
        f"{trial_dirs[2]}/metrics.json: schema_version 99 comes from a newer hmem-tune (this one "
        "reads up to 1): upgrade to read it")
    assert str(trial_dirs[3]) not in invalid  # one trial still counts: the report has a verdict
    out = tmp_path / "r.md"
    done = subprocess.run([sys.executable, "-m", "hmem.cli", "report", str(copy), "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "## Trials that do not count" in out.read_text()
    broken = json.loads((trial_dirs[3] / "metrics.json").read_text())
    del broken["steps"]
    (trial_dirs[3] / "metrics.json").write_text(json.dumps(broken))
    note = load_trials([copy]).set_index("trial_path").loc[str(trial_dirs[3]), "note"]
    assert note.startswith(f"{trial_dirs[3]}/metrics.json") and "steps" in note


def test_the_notebook_runs_headless_and_converts_to_html(campaign, tmp_path):
    folder = campaign["folder"]
    bin_dir = Path(sys.executable).parent
    executed = tmp_path / "report.ipynb"
    run = subprocess.run([str(bin_dir / "papermill"), str(REPO / "analysis" / "report.ipynb"),
                          str(executed), "-y", json.dumps({"experiments": [str(folder)]}),
                          "--cwd", str(REPO)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = json.loads(executed.read_text())
    images = sum("image/png" in out.get("data", {}) for cell in outputs["cells"]
                 for out in cell.get("outputs", []))
    assert images >= 3
    printed = "".join("".join(out.get("text", "")) for cell in outputs["cells"]
                      for out in cell.get("outputs", []))
    assert "Campaign tinyplan" in printed and " finished at " in printed  # the folder's status
    converted = subprocess.run([str(bin_dir / "jupyter"), "nbconvert", "--to", "html",
                                str(executed)], capture_output=True, text=True, timeout=300)
    assert converted.returncode == 0, converted.stderr[-2000:]
    page = (tmp_path / "report.html").read_text()
    assert "Verdicts" in page and "a1_zero" in page


OPEN_SPACE = SPACE.replace("name: tinyplan", "name: opengates").replace(
    "seeds: [0, 1]", "seeds: [0]").replace(
    "  frozen: {chrc: {enabled: false}}\n",
    "  frozen: {chrc: {enabled: false}}\n"
    "  online_base: {chrc: {enabled: false}, backbone: {online_lr_scale: 1.0}}\n"
    "  online_slow: {chrc: {enabled: false}, backbone: {online_lr_scale: 0.3}}\n").replace(
    "  p2p7p8: {}\n", "  p2p7p8: {}\n  p2p7p8_online: {backbone: {online_lr_scale: 1.0}}\n")


def test_gates_open_and_a_single_seed_gets_reproduced(tmp_path, cache_dir, embedded_ray):
    """The other way through the gates: with a threshold every gain passes, A2 and S3 run; with
    one seed, each best variant needs reproduction and gets the extra seed with its control."""
    from analysis.rules import Rules

    space = tmp_path / "opengates.yaml"
    space.write_text(OPEN_SPACE.replace("  a1_zero_b: {snma: {enabled: true, beta: 0.0, "
                                        "lr_scale: 2.0}}\n", "").replace(
        "  a1_sweep: {snma: {enabled: true, beta: 0.3}}\n", "").replace(
        "  b1_bilinear: {chrc: {retrieval: {similarity: bilinear}}}\n", ""))
    run_campaign(space, CampaignOptions(storage=str(tmp_path / "out"), cache_dir=str(cache_dir),
                                        extra_seeds=1, rules=Rules(min_gain=-1.0)))
    folder = tmp_path / "out" / "opengates"
    log = (folder / "campaign.log").read_text()
    assert "gate A2 on synthetic: open (A1's best (a1_zero)" in log
    assert "gate S3 on synthetic: open" in log
    assert "A1 on synthetic: a1_zero needs reproduction" in log
    trials = load_trials([folder / s for s in _stages(folder)])
    # a baseline per control's backbone regime: the two learning rates each ran only to their
    # validation MSE (S0-select), and only the one chosen on it streamed the whole test; the
    # frozen backbone, alone in its regime, needed no choice (nor a selection run)
    select = trials[trials["experiment"] == "S0-select"]
    assert set(select["variant"]) == {"online_base", "online_slow"} and not select["valid"].any()
    chosen = select.set_index("variant")["warmup_mse"].idxmin()
    other = ({"online_base", "online_slow"} - {chosen}).pop()
    assert (f"baseline on synthetic (learning backbone): {chosen} chosen on validation MSE "
            f"({chosen} ") in log
    assert "baseline on synthetic (frozen backbone): frozen, the only CHRC-free variant" in log
    s0 = trials[trials["experiment"].isin(["S0", f"S0-{chosen}", "S0-frozen"])]
    assert set(s0["variant"]) == {chosen, "frozen", "p2p7p8", "p2p7p8_online"}
    assert s0["valid"].all() and other not in set(trials[trials["valid"]]["variant"])
    # each control is measured against the baseline of its own regime
    from analysis.report import build
    verdicts = build([folder / s for s in _stages(folder)]).verdicts
    controls = verdicts[verdicts["direction"] == "control"].set_index("best_variant")
    assert controls.loc["p2p7p8", "best_baseline"] == "frozen"
    assert controls.loc["p2p7p8_online", "best_baseline"] == chosen
    # three control seeds for the noise floor: S0 ran seed 0, S0-seeds 1 and 2, so the
    # reproduction on seed 1 runs the variant alone
    s0_seeds = trials[trials["experiment"] == "S0-seeds"]
    assert set(zip(s0_seeds["variant"], s0_seeds["seed"])) == {
        (control, seed) for control in ("p2p7p8", "p2p7p8_online") for seed in (1, 2)}
    repro = trials[trials["experiment"] == "A1-repro-synthetic"]
    assert set(zip(repro["variant"], repro["seed"])) == {("a1_zero", 1)}
    assert "a2" in set(trials["variant"])
    combined = trials[trials["direction"] == "S3"]["variant"]
    assert len(combined) == 1 and combined.iloc[0].startswith("s3_a")
    # futility stopping is on by default: the directions' stages compare with S0's controls
    # (at the campaign's min_gain, so nothing stops here), S0 and reproductions run every window
    stages = {p.stem: load_space(p).stopping for p in (folder / "stages").glob("*.yaml")}
    firsts = stages["directions-first"]
    assert firsts.enabled and firsts.controls == [str(folder / "S0")] and firsts.min_gain == -1.0
    assert stages["A2-first"].enabled  # gated: after A1, in a stage of its own
    assert not stages["S0"].enabled and not stages["S0-seeds"].enabled
    assert not stages[f"S0-{chosen}"].enabled and not stages["S0-frozen"].enabled
    assert not stages["A1-repro-synthetic"].enabled
    assert not trials["stopped"].any()


def test_an_interrupted_stage_stops_the_campaign_instead_of_judging_it(tmp_path):
    """Ctrl+C makes Tune save the stage and return: the campaign must stop there (to be resumed),
    not judge a half-run stage and go on to the next."""
    from tune.campaign import StageInterrupted
    from tune.launcher import LaunchReport

    space = tmp_path / "tinyplan.yaml"
    space.write_text(SPACE)
    launched = []

    def interrupted(path, options):
        launched.append(options.name)
        return LaunchReport(str(tmp_path / options.name), trials=4, errored=0, seconds=1.0,
                            best=[], backbones=1, unfinished=3)

    with pytest.raises(StageInterrupted, match="stage S0 was interrupted.*--resume"):
        run_campaign(space, CampaignOptions(storage=str(tmp_path / "out")),
                     launcher=interrupted)
    assert launched == ["S0"]
    log = (tmp_path / "out" / "tinyplan" / "campaign.log").read_text()
    assert "S0: interrupted with 3 of 4 trials unfinished" in log
