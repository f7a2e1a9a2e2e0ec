"""The online protocol, end to end, for one trial.

For every window ``s`` of a stream, in time order (reference section 1):

1. reveal rows up to ``s + L`` (the current window's input end);
2. update on the recent window ``s - H``, whose target ends exactly there;
3. write its error into the memory (inside the learner's update);
4. forecast window ``s`` with no gradient; that forecast is what the metrics score.

The validation segment runs first as warm-up when ``online.warmup`` is on (parameters train,
memory fills); the memory is cleared when the test stream starts and the parameters are kept.
A method with nothing to train (``frozen``) takes its forecasts from the cache in one step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from hmem.artefacts import BaseForecasts, Pretrained, load_or_compute_base_forecasts
from hmem.config import TrialConfig
from hmem.data.splits import PreparedData
from hmem.errors import NumericalError
from hmem.online.learner import OnlineLearner
from hmem.online.stream import RevealedSeries

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Progress:
    """Where a test stream stands; passed to the progress callback every ``progress_every``."""

    windows_done: int
    windows_total: int
    scored: int  # windows whose targets are revealed and scored so far
    running_mse: float  # MSE over those windows
    seconds: float  # since the stream started

    @property
    def ms_per_step(self) -> float:
        return 1000.0 * self.seconds / max(self.windows_done, 1)


ProgressFn = Callable[[Progress], None]


class _RunningScore:
    """Scores forecasts once their targets are revealed: the running MSE the loop can report."""

    def __init__(self, series: RevealedSeries, starts: range, forecasts: torch.Tensor) -> None:
        self.series, self.starts, self.forecasts = series, starts, forecasts
        self.scored, self.total = 0, 0.0

    def update(self) -> float:
        revealed = self.series.clock - self.series.seq_len - self.series.horizon
        ready = min(max(revealed - self.starts[0] + 1, 0), len(self.starts))
        if ready > self.scored:
            window = self.starts[self.scored : ready]
            err = self.forecasts[self.scored : ready] - self.series.targets(window)
            self.total += float(err.pow(2).mean(dim=(1, 2)).sum())
            self.scored = ready
        return self.total / self.scored if self.scored else float("nan")


@dataclass
class StreamOutcome:
    starts: range
    forecasts: torch.Tensor  # [N, H, C]
    seconds: float


@dataclass
class RunResult:
    metrics: dict[str, Any]
    curve: torch.Tensor  # per-window test MSE [N]
    curve_mae: torch.Tensor  # per-window test MAE [N]
    forecasts: torch.Tensor = field(repr=False)  # [N, H, C], scaled units


def resolve_device(cfg: TrialConfig) -> torch.device:
    """``auto`` takes the GPU when this process was given one (a Ray GPU trial), else the CPU."""
    if cfg.runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.runtime.device)


def _stream(
    learner: OnlineLearner,
    series: RevealedSeries,
    starts: range,
    progress: ProgressFn | None = None,
    progress_every: int = 1000,
) -> StreamOutcome:
    horizon, seq_len = series.horizon, series.seq_len
    forecasts = torch.empty(len(starts), horizon, series.n_vars, device=series.device)
    score = _RunningScore(series, starts, forecasts)
    began = time.perf_counter()
    for j, start in enumerate(starts):
        series.reveal_until(start + seq_len)
        if learner.trainable:
            learner.update(series, start - horizon)
        forecasts[j] = learner.predict(series, start)
        if progress is not None and (j + 1) % progress_every == 0:
            mse = score.update()
            progress(Progress(j + 1, len(starts), score.scored, mse, time.perf_counter() - began))
    return StreamOutcome(starts, forecasts, time.perf_counter() - began)


def _check_finite(forecasts: torch.Tensor, starts: range, stream: str) -> None:
    bad = (~torch.isfinite(forecasts)).flatten(1).any(dim=1).nonzero()
    if len(bad):
        first = int(bad[0])
        raise NumericalError(
            f"{stream} stream: the forecast of window {first} (row {starts[first]}) is not "
            f"finite; {len(bad)} windows are affected. Lower online.lr or enable online.grad_clip"
        )


def _limit(window_starts: range, limit: int | None) -> range:
    return window_starts if limit is None else window_starts[:limit]


def run_trial(
    cfg: TrialConfig,
    data: PreparedData,
    pretrained: Pretrained,
    base: BaseForecasts | None = None,
    progress: ProgressFn | None = None,
    progress_every: int = 1000,
) -> RunResult:
    """Run warm-up (if on) and the test stream; score every test window."""
    began = time.perf_counter()
    device = resolve_device(cfg)
    learner = OnlineLearner(cfg, pretrained.model, data.n_vars, data.horizon, device)
    if learner.needs_base_cache and base is None:
        base = load_or_compute_base_forecasts(pretrained, data)
    data = data.to(device)
    base = base.to(device) if base is not None else None
    series = RevealedSeries(data, base, cfg.chrc if cfg.chrc.enabled else None)
    val_starts = _limit(data.segments["val"].window_starts(data.seq_len, data.horizon),
                        cfg.data.max_val_windows)
    test_starts = _limit(data.segments["test"].window_starts(data.seq_len, data.horizon),
                         cfg.data.max_test_windows)

    warmup: StreamOutcome | None = None
    if learner.trainable and cfg.online.warmup:
        warmup = _stream(learner, series, val_starts)
        _check_finite(warmup.forecasts, val_starts, "validation")
        log.info("warm-up: %d validation windows in %.1f s", len(val_starts), warmup.seconds)
    learner.start_test()

    if learner.trainable or base is None:
        test = _stream(learner, series, test_starts, progress, progress_every)
    else:  # nothing learns: every forecast is the cached one, read in one go
        series.reveal_until(test_starts[-1] + data.seq_len)
        first = test_starts[0] - base.first_start
        test = StreamOutcome(test_starts, base.forecasts[first : first + len(test_starts)].clone(),
                             0.0)
    _check_finite(test.forecasts, test_starts, "test")

    series.reveal_until(test_starts[-1] + data.seq_len + data.horizon)
    errors = test.forecasts - series.targets(test_starts)
    curve = errors.pow(2).mean(dim=(1, 2))
    curve_mae = errors.abs().mean(dim=(1, 2))
    mse = float(curve.mean())
    steps = len(test_starts)
    metrics = {
        "mse": mse,
        "mae": float(curve_mae.mean()),
        "rmse": math.sqrt(mse),
        "steps": steps,
        "test_windows": steps,
        "warmup_steps": len(warmup.starts) if warmup else 0,
        "warmup_mse": _warmup_mse(series, warmup) if warmup else None,
        "seconds_online": test.seconds,
        "seconds_warmup": warmup.seconds if warmup else 0.0,
        "seconds_total": time.perf_counter() - began,
        "ms_per_step": 1000.0 * test.seconds / steps,
        "mean_gate": float(learner.gate_sum) / learner.corrected if learner.corrected else None,
        "corrected_fraction": learner.corrected / steps,
        "memory_entries": [m.memory.size for m in learner.bank] if learner.bank else [],
        "trainable_parameters": sum(
            p.numel() for p in learner.parameters() if p.requires_grad
        ),
    }
    return RunResult(metrics, curve, curve_mae, test.forecasts)


def _warmup_mse(series: RevealedSeries, warmup: StreamOutcome) -> float:
    return float((warmup.forecasts - series.targets(warmup.starts)).pow(2).mean())
