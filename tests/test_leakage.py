"""No forecast may depend on a row the protocol has not revealed when it is issued.

Three independent checks: (1) change every value at and after row t; every forecast issued
before t (window s with s + L <= t) must be bit-identical, for every regime, and so must the
learner's whole state (memory contents, parameters, optimiser state) after every step taken
before t: a leak into the memory shows there even when no compared forecast reads the entry yet;
(2) the same from outside, through ``hmem run --save-forecasts`` on a perturbed file; (3) every
read of the online loop goes through RevealedSeries, which refuses unrevealed rows, so a leaking
method fails. A mutant that leaks one row into its memory writes must be caught by (1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from hmem.artefacts import (
    BaseForecasts,
    compute_base_forecasts,
    load_or_pretrain,
    online_window_range,
)
from hmem.cli import main
from hmem.data import prepare
from hmem.errors import LeakageError
from hmem.online import OnlineLearner, RevealedSeries, run_trial
from hmem.online.runner import OnlineRun

REGIMES = {
    "chrc+training backbone": {"backbone": {"online_lr_scale": 0.1}},
    "chrc+frozen backbone (cache)": {},
    "backbone alone": {"chrc": {"enabled": False}, "backbone": {"online_lr_scale": 1.0}},
    "variants A1+A2+B3": {"snma": {"enabled": True, "memory_dim": 8, "enhance_query": True},
                          "chrc": {"retrieval": {"mode": "attention", "attention_heads": 2}}},
    "variant B1 mlp": {"chrc": {"retrieval": {"similarity": "mlp", "shortlist": 10}}},
    # one bucket: an entry written at a step is read by the very next forecast
    "one bucket, training backbone": {"chrc": {"buckets": {"count": 1}},
                                      "backbone": {"online_lr_scale": 0.1}},
}


@pytest.mark.parametrize("regime", REGIMES)
def test_forecasts_issued_before_t_ignore_every_row_from_t(tiny, cache_dir, regime):
    cfg = tiny(REGIMES[regime])
    data = prepare(cfg.data)
    pretrained = load_or_pretrain(cfg, data, cache_dir)
    L = data.seq_len
    starts = data.segments["test"].window_starts(L, data.horizon)[: cfg.data.max_test_windows]
    t = starts[90] + L  # forecasts 0..90 are issued before row t is revealed

    changed = data.values.clone()
    changed[t:] += torch.randn(changed[t:].shape, generator=torch.Generator().manual_seed(1))
    perturbed = replace(data, values=changed)

    def forecasts(d):
        first, last = online_window_range(d)
        base = BaseForecasts(first, compute_base_forecasts(pretrained.model, d, first, last))
        fresh = load_or_pretrain(cfg, d, cache_dir)  # same weights, untouched by earlier runs
        return run_trial(cfg, d, fresh, base=base, keep_forecasts=True).forecasts

    original, leaked = forecasts(data), forecasts(perturbed)
    assert torch.equal(original[:91], leaked[:91])
    assert not torch.equal(original[91:], leaked[91:])  # the check can fail: later ones see t


def test_revealed_series_refuses_unrevealed_rows(tiny):
    cfg = tiny()
    data = prepare(cfg.data)
    series = RevealedSeries(data, None, cfg.chrc)
    L, H = data.seq_len, data.horizon
    start = data.segments["test"].start
    series.reveal_until(start + L)
    series.inputs(start)  # the current window's input is known
    series.pogt(start)
    series.target(start - H)  # the recent window's target ends exactly at the clock
    with pytest.raises(LeakageError, match=r"target of window .* only rows before"):
        series.target(start - H + 1)
    with pytest.raises(LeakageError):
        series.inputs(start + 1)
    with pytest.raises(LeakageError, match="cannot go back"):
        series.reveal_until(start)


class _PeekingLearner(OnlineLearner):
    """A broken method that looks at the current window's target when forecasting."""

    def predict(self, series, start):
        return series.target(start)


def test_a_method_that_peeks_fails_loudly(tiny, cache_dir, monkeypatch):
    import hmem.online.runner as runner

    cfg = tiny()
    data = prepare(cfg.data)
    pretrained = load_or_pretrain(cfg, data, cache_dir)
    monkeypatch.setattr(runner, "OnlineLearner", _PeekingLearner)
    with pytest.raises(LeakageError, match="target of window"):
        run_trial(cfg, data, pretrained)


# ----------------------------------------------------------------------------- learner state


def _tensors(state, path="") -> Iterator[tuple[str, object]]:
    """Every leaf of a nested checkpoint state, with its path."""
    if isinstance(state, dict):
        for key, value in state.items():
            yield from _tensors(value, f"{path}.{key}")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _tensors(value, f"{path}[{i}]")
    else:
        yield path, state


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def first_divergence(cfg, cache_dir, t_index: int = 90) -> tuple[str, int] | None:
    """Run the online loop on the data and on a copy changed from row t on, in lockstep, one
    window at a time; while no row >= t is revealed, the learners' states must be identical.
    Returns (what differed, the clock then) for the first difference, or None."""
    data = prepare(cfg.data)
    pretrained = load_or_pretrain(cfg, data, cache_dir)
    L = data.seq_len
    starts = data.segments["test"].window_starts(L, data.horizon)[: cfg.data.max_test_windows]
    t = starts[t_index] + L
    changed = data.values.clone()
    changed[t:] += torch.randn(changed[t:].shape, generator=torch.Generator().manual_seed(1))
    runs = []
    for d in (data, replace(data, values=changed)):
        first, last = online_window_range(d)
        base = BaseForecasts(first, compute_base_forecasts(pretrained.model, d, first, last))
        runs.append(OnlineRun(cfg, d, load_or_pretrain(cfg, d, cache_dir), base))
    while not runs[0].done and runs[0].series.clock <= t:
        for run in runs:
            run.advance(1)
        if runs[0].series.clock > t:
            break
        states = [dict(_tensors(run.learner.checkpoint_state())) for run in runs]
        for name, value in states[0].items():
            if not _same(value, states[1][name]):
                return name, runs[0].series.clock
    assert runs[0].series.clock > t, "the harness never reached row t"
    return None


@pytest.mark.parametrize("regime", REGIMES)
def test_learner_state_before_t_ignores_every_row_from_t(tiny, cache_dir, regime):
    assert first_divergence(tiny(REGIMES[regime]), cache_dir) is None


class _OneRowAheadWrite(OnlineLearner):
    """A mutant whose memory write uses the target shifted one row ahead, read from the values
    directly (past the guard): a one-row leak that the forecasts alone can miss."""

    def _remember(self, series, start, bucket, query, error):
        L, H = series.seq_len, series.horizon
        ahead = series._values[start + L + 1 : start + L + H + 1]
        super()._remember(series, start, bucket, query, error + ahead - series.target(start))


def test_the_harness_catches_a_one_row_leak_in_the_memory_write(tiny, cache_dir, monkeypatch):
    import hmem.online.runner as runner

    monkeypatch.setattr(runner, "OnlineLearner", _OneRowAheadWrite)
    # two buckets: the leaked entry lands in a memory no compared forecast reads; the state shows it
    caught = first_divergence(tiny(REGIMES["chrc+frozen backbone (cache)"]), cache_dir)
    assert caught is not None and ".memory.values" in caught[0]
    caught = first_divergence(tiny(REGIMES["one bucket, training backbone"]), cache_dir)
    assert caught is not None


# ----------------------------------------------------------------------------- from outside


def test_saved_forecasts_show_no_leak_when_the_file_is_perturbed_from_row_t(tmp_path, cache_dir):
    """What a researcher can do with any file: perturb it from row T on, rerun with
    ``--save-forecasts``, and compare every forecast whose window starts at or before T - L."""
    from hmem.config import SyntheticConfig
    from hmem.data.synthetic import synthetic_series

    raw = synthetic_series(SyntheticConfig(rows=1600, variables=3))
    frame = pd.DataFrame(raw.values, columns=list(raw.columns))
    frame.insert(0, "date", raw.dates.strftime("%Y-%m-%d %H:%M:%S"))
    clean, perturbed = tmp_path / "clean.csv", tmp_path / "perturbed.csv"
    frame.to_csv(clean, index=False)
    T = 700
    changed = frame.copy()
    changed.iloc[T:, 1:] += np.random.default_rng(0).normal(size=changed.iloc[T:, 1:].shape)
    changed.to_csv(perturbed, index=False)

    def forecasts(path, out):
        assert main(["run", "search_spaces/control.yaml", "--variant", "p2p7p8", "--dataset",
                     str(path), "--out", str(out), "--cache-dir", str(cache_dir),
                     "--save-forecasts", "--set", "data.seq_len=48", "--set", "data.horizon=12",
                     "--set", "backbone.kind=nlinear", "--set", "pretrain.epochs=1",
                     "--set", "chrc.memory.capacity=30", "--set", "chrc.feature_dim=16",
                     "--set", "chrc.hidden_dim=24", "--set", "chrc.buckets.count=1",
                     "--set", "data.max_test_windows=500"]) == 0
        with np.load(out / "forecasts.npz", allow_pickle=False) as saved:
            return saved["start_row"], saved["forecast"]

    starts, before = forecasts(clean, tmp_path / "a")
    same_starts, after = forecasts(perturbed, tmp_path / "b")
    curve = pd.read_csv(tmp_path / "a" / "curve.csv")
    assert np.array_equal(starts, same_starts) and list(starts) == list(curve["start_row"])
    assert before.shape == (500, 12, 3) and (starts[0] + 48 + 12 <= T)
    issued = starts <= T - 48
    assert issued.any() and not issued.all()
    assert np.array_equal(before[issued], after[issued])
    assert not np.array_equal(before[~issued], after[~issued])  # the check can fail
