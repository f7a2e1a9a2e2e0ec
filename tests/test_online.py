"""The online runner: determinism, the base-forecast cache, warm-up, bucket routing and the
baselines, all on the same stream."""

from __future__ import annotations

import math

import pytest
import torch

from hmem.artefacts import load_or_compute_base_forecasts, load_or_pretrain
from hmem.data import prepare
from hmem.data.calendar import time_buckets
from hmem.errors import ConfigError, NumericalError
from hmem.online import OnlineLearner, run_trial
from hmem.online.runner import OnlineRun


def test_same_config_and_seed_give_identical_numbers(tiny, run_online):
    cfg = tiny({"backbone": {"online_lr_scale": 0.1}})
    first, _ = run_online(cfg)
    second, _ = run_online(cfg)
    assert torch.equal(first.forecasts, second.forecasts)
    assert first.metrics["mse"] == second.metrics["mse"]
    other_seed, _ = run_online(tiny({"backbone": {"online_lr_scale": 0.1}, "seed": 1}))
    assert other_seed.metrics["mse"] != first.metrics["mse"]


def test_a_run_that_trains_nothing_seeded_is_the_same_on_every_seed(tiny, run_online):
    """The campaign runs such baselines once per dataset (TrialConfig.seed_matters)."""
    online = {"chrc": {"enabled": False}, "backbone": {"online_lr_scale": 1.0}}
    assert not tiny(online).seed_matters and tiny().seed_matters
    assert tiny({"chrc": {"enabled": False}, "snma": {"enabled": True}}).seed_matters
    first, _ = run_online(tiny(online))
    second, _ = run_online(tiny(online, {"seed": 3}))
    assert torch.equal(first.forecasts, second.forecasts)
    assert first.metrics["mse"] == second.metrics["mse"]


def test_cached_base_forecasts_match_running_the_frozen_backbone_every_step(tiny, run_online):
    cached, _ = run_online(tiny())
    live, _ = run_online(tiny({"runtime": {"base_cache": False}}))
    assert cached.metrics["steps"] == live.metrics["steps"] == 160
    assert torch.allclose(cached.forecasts, live.forecasts, rtol=1e-5, atol=1e-5)
    assert cached.metrics["mse"] == pytest.approx(live.metrics["mse"], rel=1e-5)


def test_baselines_share_the_stream(tiny, run_online, cache_dir):
    frozen, data = run_online(tiny({"chrc": {"enabled": False}}))
    pretrained = load_or_pretrain(tiny(), data, cache_dir)
    base = load_or_compute_base_forecasts(pretrained, data)
    starts = data.segments["test"].window_starts(data.seq_len, data.horizon)[:160]
    expected = base.forecasts[starts[0] - base.first_start :][:160]
    assert torch.equal(frozen.forecasts, expected)
    assert frozen.metrics["trainable_parameters"] == 0

    online, _ = run_online(tiny({"chrc": {"enabled": False}, "backbone": {"online_lr_scale": 1}}))
    chrc, _ = run_online(tiny())
    assert online.metrics["steps"] == chrc.metrics["steps"] == frozen.metrics["steps"]
    assert not torch.equal(online.forecasts[0], frozen.forecasts[0])  # warm-up trained it
    assert chrc.metrics["corrected_fraction"] > 0.5 and 0 < chrc.metrics["mean_gate"] < 1
    assert chrc.metrics["mse"] != frozen.metrics["mse"]


def test_warmup_trains_and_the_test_stream_starts_with_empty_memories(tiny, cache_dir):
    cfg = tiny()
    data = prepare(cfg.data)
    run = OnlineRun(cfg, data, load_or_pretrain(cfg, data, cache_dir))
    before = {k: v.clone() for k, v in run.learner.bank.state_dict().items()
              if isinstance(v, torch.Tensor)}
    run.advance(59)  # 60 warm-up windows
    assert run.phase == "warmup" and all(m.memory.size > 0 for m in run.learner.bank)
    run.advance(1)
    assert run.phase == "test" and run.position == 0
    assert all(m.memory.size == 0 for m in run.learner.bank)  # emptied for the test stream
    after = run.learner.bank.state_dict()
    trained = [k for k in before if "memory" not in k and not torch.equal(before[k], after[k])]
    assert trained  # ...but what the warm-up learned is kept


def test_each_window_uses_the_bucket_of_its_last_input_row(tiny, cache_dir):
    cfg = tiny({"chrc": {"memory": {"capacity": 500}}, "online": {"warmup": False}})
    data = prepare(cfg.data)
    run = OnlineRun(cfg, data, load_or_pretrain(cfg, data, cache_dir))
    run.advance(100)
    rows = time_buckets(data.dates, 2)
    recent = [s - 12 for s in run.streams["test"][:100]]
    expected = [sum(rows[s + 47] == b for s in recent) for b in range(2)]
    assert [m.memory.writes for m in run.learner.bank] == expected
    assert min(expected) > 10  # both buckets really used


def test_one_bucket_and_no_chrc_build_what_they_say(tiny, cache_dir):
    cfg = tiny({"chrc": {"buckets": {"count": 1}}})
    data = prepare(cfg.data)
    pretrained = load_or_pretrain(cfg, data, cache_dir)
    assert len(OnlineLearner(cfg, pretrained.model, data.n_vars, data.horizon).bank) == 1
    off = tiny({"chrc": {"enabled": False}})
    assert OnlineLearner(off, pretrained.model, data.n_vars, data.horizon).bank is None


@pytest.mark.parametrize("warmup", [True, False])
def test_non_finite_forecasts_stop_the_run_with_the_window(tiny, cache_dir, warmup):
    cfg = tiny({"chrc": {"enabled": False}, "runtime": {"base_cache": False},
                "online": {"warmup": warmup}})
    data = prepare(cfg.data)
    pretrained = load_or_pretrain(cfg, data, cache_dir)
    with torch.no_grad():
        pretrained.model.linear.bias[3] = float("nan")
    stream = "validation" if warmup else "test"  # the first one to forecast
    with pytest.raises(NumericalError, match=rf"{stream} stream: the forecast of window 0 "
                                              r"\(row \d+\) is not finite; \d+ windows are "
                                              "affected"):
        run_trial(cfg, data, pretrained)


@pytest.mark.parametrize("view", ["forecast_time", "all"])
def test_updates_retrieve_only_what_existed_when_the_window_was_forecast(tiny, cache_dir,
                                                                       monkeypatch, view):
    from hmem.chrc.memory import ErrorMemory

    cfg = tiny({"chrc": {"memory": {"update_view": view, "capacity": 200}},
                "online": {"warmup": False}})
    data = prepare(cfg.data)
    run = OnlineRun(cfg, data, load_or_pretrain(cfg, data, cache_dir))
    seen = []  # (window being updated, origins of what it retrieved)
    original = ErrorMemory.search

    def recording(memory, query, k, latest_origin=None, similarity=None):
        found = original(memory, query, k, latest_origin, similarity)
        if query.requires_grad:  # an update, not a forecast
            seen.append((run.series.clock - 48 - 12, memory.origin[found.slots].tolist()))
        return found

    monkeypatch.setattr(ErrorMemory, "search", recording)
    run.advance(120)
    assert len(seen) > 50
    newest = [max(origins) - window for window, origins in seen]
    if view == "forecast_time":
        assert max(newest) <= -12  # nothing newer than window - H
    else:
        assert max(newest) > -12  # the literal reading sees the windows just before


def test_progress_reports_the_running_mse_of_revealed_windows_only(tiny, run_online, cache_dir):
    cfg = tiny()
    data = prepare(cfg.data)
    pretrained = load_or_pretrain(cfg, data, cache_dir)
    reports = []
    result = run_trial(cfg, data, pretrained, progress=reports.append, progress_every=40)
    assert [r.windows_done for r in reports] == [40, 80, 120, 160]
    # window j is scored once its target is revealed, when window j + H is forecast; the last
    # report comes once the stream has ended and every window is scored
    assert [r.scored for r in reports] == [28, 68, 108, 160]
    assert reports[1].running_mse == pytest.approx(float(result.curve[:68].mean()), rel=1e-6)
    last = reports[-1]
    assert last.running_mse == pytest.approx(result.metrics["mse"], rel=1e-6)
    assert last.windows_total == 160 and last.ms_per_step > 0


@pytest.mark.parametrize("overrides", [
    {},
    {"backbone": {"online_lr_scale": 0.1}},
    {"snma": {"enabled": True, "memory_dim": 8, "enhance_query": True,
              "beta_warmup_windows": 100},
     "chrc": {"retrieval": {"similarity": "bilinear"}}},
], ids=["frozen backbone", "training backbone", "A1+A2+B1"])
def test_a_run_saved_at_any_window_continues_with_identical_numbers(tiny, cache_dir, tmp_path,
                                                                  overrides):
    cfg = tiny(overrides)
    data = prepare(cfg.data)

    def fresh():
        return OnlineRun(cfg, data, load_or_pretrain(cfg, data, cache_dir), keep_forecasts=True)

    whole = fresh()
    whole.advance()
    expected = whole.result()

    def save_and_reload(run):
        torch.save(run.state_dict(), tmp_path / "state.pt")
        again = fresh()
        again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
        return again

    run = fresh()
    run.advance(37)  # mid warm-up
    run = save_and_reload(run)
    run.advance(23 + 50)  # past the end of the warm-up, mid test stream
    assert run.phase == "test" and run.position == 50
    run = save_and_reload(run)
    run.advance()
    got = run.result()
    assert torch.equal(got.curve, expected.curve) and torch.equal(got.curve_mae, expected.curve_mae)
    assert torch.equal(got.forecasts, expected.forecasts)
    assert got.metrics["mse"] == expected.metrics["mse"]
    assert got.metrics["mean_gate"] == expected.metrics["mean_gate"]


def test_library_calls_leave_the_callers_random_state_and_threads_alone(tiny, tmp_path):
    """Pretraining, building a learner and a whole trial seed their own weights but hand the
    process back as they found it (a notebook's or another trial's random stream, its threads).
    Only the entry points (``hmem`` commands, Ray workers) set process-wide state."""
    from hmem.spaces import Cell
    from hmem.trial import TrialArtefacts, run_trial_and_save

    cfg = tiny({"snma": {"enabled": True}})  # draws for the bank, the probe and SNMA
    torch.manual_seed(1234)
    threads = torch.get_num_threads()
    state = torch.get_rng_state()
    artefacts = TrialArtefacts.load_or_build(cfg, cache_dir=tmp_path / "fresh-cache")
    assert not artefacts.pretrained.loaded_from_cache  # pretraining ran (with dropout) here
    result = run_trial_and_save(cfg, "tiny", Cell("a1", "synthetic", 0), tmp_path / "out",
                                artefacts)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads
    # and the numbers do not depend on the caller's random state
    torch.manual_seed(99)
    again = run_trial(cfg, artefacts.data, artefacts.pretrained)
    assert torch.equal(again.curve, result.curve)


def test_a_validation_only_run_never_reads_the_test_segment_and_reports_the_warmup(tiny,
                                                                                   cache_dir):
    """``online.test_stream: false`` (tuning on validation): the warm-up is reported as it goes,
    the revealed data stop at the validation segment's end, and no test score exists."""
    cfg = tiny({"online": {"test_stream": False}, "data": {"max_val_windows": None}})
    data = prepare(cfg.data)
    run = OnlineRun(cfg, data, load_or_pretrain(cfg, data, cache_dir))
    reports = list(run.reports(10))
    assert [r.windows_done for r in reports[:-1]] == [0] * (len(reports) - 1)
    assert len(reports) > 2 and reports[-1].warmup_mse == pytest.approx(
        run.scores["warmup"].running_mse())
    val_end = data.segments["val"].window_starts(data.seq_len, data.horizon)[-1] \
        + data.seq_len + data.horizon
    assert run.series.clock <= val_end < data.segments["test"].window_starts(
        data.seq_len, data.horizon)[-1]
    result = run.result()
    assert result.metrics["steps"] == 0 and len(result.curve) == 0
    assert math.isnan(result.metrics["mse"]) and result.metrics["warmup_mse"] > 0
    with pytest.raises(ConfigError, match="online.warmup: true"):
        tiny({"online": {"test_stream": False, "warmup": False}})
    # a model that does not learn is scored on the warm-up too (a baseline is chosen on its
    # validation MSE): from the cached forecasts in one pass, as running it window by window
    # would, and still without reading the test segment
    still = tiny({"online": {"test_stream": False}, "chrc": {"enabled": False},
                  "data": {"max_val_windows": None}})
    done = OnlineRun(still, data, load_or_pretrain(still, data, cache_dir))
    assert len(list(done.reports(10))) == 1 and done.series.clock <= val_end
    cached = done.result().metrics
    live_cfg = tiny({"online": {"test_stream": False}, "chrc": {"enabled": False},
                     "data": {"max_val_windows": None}, "runtime": {"base_cache": False}})
    live = OnlineRun(live_cfg, data, load_or_pretrain(live_cfg, data, cache_dir))
    list(live.reports(10))
    assert cached["warmup_steps"] == live.result().metrics["warmup_steps"] > 0
    assert cached["warmup_mse"] == pytest.approx(live.result().metrics["warmup_mse"], rel=1e-5)


def test_a_selection_run_streams_the_first_share_of_the_test_windows(tiny, run_online):
    full, _ = run_online(tiny())
    part, _ = run_online(tiny({"online": {"test_share": 0.2}}))
    assert part.metrics["steps"] == math.ceil(0.2 * full.metrics["steps"])
    # the same windows as the full run's first ones (nothing after them was read)
    assert torch.equal(part.curve, full.curve[: len(part.curve)])


def test_runs_from_one_set_of_artefacts_start_from_the_same_pretrained_backbone(tiny, cache_dir):
    """A learner trains its own copy of the backbone: the pretrained one stays as loaded, so a
    second run from the same artefacts (a benchmark, the GPU check) gives the same numbers."""
    cfg = tiny({"backbone": {"online_lr_scale": 1.0}})
    data = prepare(cfg.data)
    pretrained = load_or_pretrain(cfg, data, cache_dir)
    before = {k: v.clone() for k, v in pretrained.model.state_dict().items()}
    first = run_trial(cfg, data, pretrained)
    assert all(torch.equal(before[k], v) for k, v in pretrained.model.state_dict().items())
    assert run_trial(cfg, data, pretrained).metrics["mse"] == first.metrics["mse"]


@pytest.mark.parametrize("clip", [1.0, 1e-4])  # 1e-4: every step clips
def test_the_sync_free_step_gives_the_same_numbers(tiny, run_online, clip):
    """``runtime.sync_free`` is the GPU's step on the CPU: nothing read back (the clip always
    multiplies, the retrieval limit stays on the device); it must change no number."""
    layers = {"backbone": {"online_lr_scale": 0.1}, "online": {"grad_clip": clip},
              "snma": {"enabled": True}}
    default, _ = run_online(tiny(layers))
    free, _ = run_online(tiny(layers, {"runtime": {"sync_free": True}}))
    assert torch.equal(default.forecasts, free.forecasts)
    assert default.metrics["mse"] == free.metrics["mse"]


def test_compile_auto_compiles_long_streams_only_and_needs_a_compiler(tiny, monkeypatch, caplog):
    from hmem.online.runner import COMPILE_PAYS_BACK, compiles

    auto, never = tiny(), tiny({"runtime": {"compile": False}})
    assert auto.runtime.compile == "auto"
    assert not compiles(auto, COMPILE_PAYS_BACK - 1) and not compiles(never, 10**6)
    assert compiles(tiny({"runtime": {"compile": True}}), 10)
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/g++")
    assert compiles(auto, COMPILE_PAYS_BACK)
    monkeypatch.setattr("shutil.which", lambda name: None)  # a slim image: eager, with a warning
    assert not compiles(auto, COMPILE_PAYS_BACK)
    assert "no C++ compiler" in caplog.text
