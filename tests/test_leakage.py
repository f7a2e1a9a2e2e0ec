"""No forecast may depend on a row the protocol has not revealed when it is issued.

Two independent checks: (1) change every value at and after row t; every forecast issued before
t (window s with s + L <= t) must be bit-identical, for every regime; (2) every read of the online
loop goes through RevealedSeries, which refuses unrevealed rows, so a leaking method fails.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hmem.artefacts import (
    BaseForecasts,
    compute_base_forecasts,
    load_or_pretrain,
    online_window_range,
)
from hmem.data import prepare
from hmem.errors import LeakageError
from hmem.online import OnlineLearner, RevealedSeries, run_trial

REGIMES = {
    "chrc+training backbone": {"backbone": {"online_lr_scale": 0.1}},
    "chrc+frozen backbone (cache)": {},
    "backbone alone": {"chrc": {"enabled": False}, "backbone": {"online_lr_scale": 1.0}},
    "variants A1+A2+B3": {"snma": {"enabled": True, "memory_dim": 8, "enhance_query": True},
                          "chrc": {"retrieval": {"mode": "attention", "attention_heads": 2}}},
    "variant B1 mlp": {"chrc": {"retrieval": {"similarity": "mlp", "shortlist": 10}}},
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
