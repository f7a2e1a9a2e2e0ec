"""The online protocol, end to end, for one trial.

For every window ``s`` of a stream, in time order (reference section 1):

1. reveal rows up to ``s + L`` (the current window's input end);
2. update on the recent window ``s - H``, whose target ends exactly there;
3. write its error into the memory (inside the learner's update);
4. forecast window ``s`` with no gradient; that forecast is what the metrics score, as soon as
   its target is revealed (``H`` windows later).

The validation segment runs first as warm-up when ``online.warmup`` is on (parameters train,
memory fills); the memory is cleared when the test stream starts and the parameters are kept.
A method with nothing to train (``frozen``) takes its forecasts from the cache in one step.

:class:`OnlineRun` holds all of this as explicit state: it can stop after any window, be saved
with :meth:`OnlineRun.state_dict` and continue from there, with the same numbers on CPU as a run
that never stopped. :meth:`OnlineRun.reports` is how callers drive it: the command line and the
Ray Tune trainable both iterate over its progress reports.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from hmem.artefacts import BaseForecasts, Pretrained, load_or_compute_base_forecasts
from hmem.config import OnlineConfig, TrialConfig
from hmem.data.splits import PreparedData
from hmem.errors import NumericalError
from hmem.online.learner import OnlineLearner
from hmem.online.stream import RevealedSeries

log = logging.getLogger(__name__)

_STATE_FORMAT = 2  # 2: the learner carries its mechanism probe


class Phase(str, Enum):
    """Where a run stands: on the validation warm-up, on the test stream, or finished."""

    WARMUP = "warmup"
    TEST = "test"
    DONE = "done"


@dataclass(frozen=True)
class Progress:
    """Where a test stream stands; passed to the progress callback every ``progress_every``."""

    windows_done: int
    windows_total: int
    scored: int  # windows whose targets are revealed and scored so far
    running_mse: float  # MSE over those windows
    seconds: float  # online seconds of the test stream so far
    memory_fill: float  # mean fraction of memory capacity in use (0 without CHRC)
    mean_gate: float | None  # mean applied CHRC gate over corrected forecasts so far
    acted: dict[str, float] = field(default_factory=dict)  # hmem.online.probe's figures
    warmup_mse: float = float("nan")  # validation MSE so far (all of it once the test began)

    @property
    def ms_per_step(self) -> float:
        return 1000.0 * self.seconds / max(self.windows_done, 1)


ProgressFn = Callable[[Progress], None]


@dataclass
class RunResult:
    metrics: dict[str, Any]
    curve: torch.Tensor  # per-window test MSE [N]
    curve_mae: torch.Tensor  # per-window test MAE [N]
    forecasts: torch.Tensor | None = field(default=None, repr=False)  # [N, H, C] if kept


#: Windows from which ``runtime.compile: auto`` compiles: compiling the correction paths takes
#: about 5-20 s here and saves 1.5-1.7 ms a step on the full ETTm1 stream (final MSE identical
#: or within 1.5e-7 relative); shorter streams (tests, the quickstart) would not earn it back.
COMPILE_PAYS_BACK = 10_000


def compiles(cfg: TrialConfig, windows: int) -> bool:
    """Whether a run of ``windows`` windows compiles (part of) its hot path
    (``runtime.compile``). Auto compiles the correction paths of a long stream where inductor
    has a C++ compiler (a slim image may have none: then the run stays eager, as a warning
    says)."""
    if cfg.runtime.compile != "auto":
        return bool(cfg.runtime.compile)
    if windows < COMPILE_PAYS_BACK:
        return False
    if not any(shutil.which(name) for name in ("c++", "g++", "clang++")):
        log.warning("runtime.compile: auto would compile this %d-window run, but no C++ "
                    "compiler is on PATH: it runs eager (same numbers, slower)", windows)
        return False
    return True


def _peak_device_memory_mb(device: torch.device) -> float | None:
    """Peak GPU memory this process allocated (trials sharing a GPU each report their own)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def resolve_device(cfg: TrialConfig) -> torch.device:
    """``auto`` takes the GPU when this process was given one (a Ray GPU trial), else the CPU."""
    if cfg.runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.runtime.device)


def _limit(window_starts: range, limit: int | None) -> range:
    return window_starts if limit is None else window_starts[:limit]


class _Scores:
    """Per-window MSE and MAE of one stream, filled in as targets are revealed.

    The last ``H`` forecasts wait in a ring buffer until their targets end; the forecast of
    window ``j`` is scored when window ``j + H`` is forecast, so no score ever reads ahead.
    """

    def __init__(self, starts: range, horizon: int, n_vars: int, device: torch.device) -> None:
        self.starts = starts
        self.mse = torch.full((len(starts),), float("nan"), device=device)
        self.mae = torch.full((len(starts),), float("nan"), device=device)
        self.pending = torch.zeros(horizon, horizon, n_vars, device=device)
        self.scored = 0
        self._checked = 0  # scores before this index are known to be finite

    def add(self, j: int, forecast: torch.Tensor, series: RevealedSeries) -> None:
        slot = j % len(self.pending)
        if j >= len(self.pending):
            self._score(j - len(self.pending), self.pending[slot], series)
        self.pending[slot] = forecast

    def finish(self, series: RevealedSeries) -> None:
        """Score the windows still waiting; their targets must be revealed by now."""
        for j in range(self.scored, len(self.starts)):
            self._score(j, self.pending[j % len(self.pending)], series)

    def _score(self, j: int, forecast: torch.Tensor, series: RevealedSeries) -> None:
        error = forecast - series.target(self.starts[j])
        self.mse[j] = error.pow(2).mean()
        self.mae[j] = error.abs().mean()
        self.scored = j + 1

    def check_finite(self, stream: str) -> None:
        begin, self._checked = self._checked, self.scored
        bad = (~torch.isfinite(self.mse[begin : self.scored])).nonzero()
        if len(bad):
            first = begin + int(bad[0])
            raise NumericalError(
                f"{stream} stream: the forecast of window {first} (row {self.starts[first]}) is "
                f"not finite; {len(bad)} windows are affected so far. Lower online.lr or enable "
                f"online.grad_clip"
            )

    def running_mse(self) -> float:
        return float(self.mse[: self.scored].mean()) if self.scored else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {"mse": self.mse, "mae": self.mae, "pending": self.pending, "scored": self.scored}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mse.copy_(state["mse"])
        self.mae.copy_(state["mae"])
        self.pending.copy_(state["pending"])
        self.scored = self._checked = int(state["scored"])


def _share(starts: range, online: OnlineConfig) -> range:
    """The test windows a run streams: none (``test_stream: false``), or the first
    ``test_share`` of them (rounded up, as the rules' selection cut is)."""
    if not online.test_stream:
        return starts[:0]
    return starts[: math.ceil(online.test_share * len(starts))]


class OnlineRun:
    """One trial's online phase (warm-up, then test) as explicit, checkpointable state."""

    def __init__(
        self,
        cfg: TrialConfig,
        data: PreparedData,
        pretrained: Pretrained,
        base: BaseForecasts | None = None,
        *,
        keep_forecasts: bool = False,
        encoder: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.cfg = cfg
        device = resolve_device(cfg)
        L, H = data.seq_len, data.horizon
        self.streams = {
            "warmup": _limit(data.segments["val"].window_starts(L, H), cfg.data.max_val_windows),
            "test": _share(_limit(data.segments["test"].window_starts(L, H),
                                  cfg.data.max_test_windows), cfg.online)
        }
        windows = len(self.streams["test"]) + (len(self.streams["warmup"])
                                                if cfg.online.warmup else 0)
        self.compiled = compiles(cfg, windows)
        learner_cfg = cfg
        if not self.compiled:  # "auto" on a short stream
            runtime = cfg.runtime.model_copy(update={"compile": False})
            learner_cfg = cfg.model_copy(update={"runtime": runtime})
        self.learner = OnlineLearner(learner_cfg, pretrained.model, data.n_vars, data.horizon,
                                     device, encoder)
        if self.learner.needs_base_cache and base is None:
            base = load_or_compute_base_forecasts(pretrained, data)
        self.base = base.to(device) if self.learner.needs_base_cache else None
        self.data = data.to(device)
        self.series = RevealedSeries(self.data, self.base, cfg.chrc if cfg.chrc.enabled else None)
        self.scores = {
            name: _Scores(starts, H, data.n_vars, device) for name, starts in self.streams.items()
        }
        # A run that learns nothing still scores the warm-up (from the cached forecasts in one
        # vectorised pass): its validation MSE is what a baseline is chosen on
        warms = cfg.online.warmup
        self.phase = Phase.WARMUP if warms else Phase.TEST
        self.warmed_up = warms
        self.position = 0  # next window of the current phase
        self.seconds = {"warmup": 0.0, "test": 0.0}
        n_test = len(self.streams["test"])
        self.forecasts = (
            torch.empty(n_test, H, data.n_vars, device=device) if keep_forecasts else None
        )
        if self.phase is Phase.TEST:
            self.learner.start_test()

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    @property
    def test_windows_done(self) -> int:
        if self.phase is Phase.WARMUP:
            return 0
        return self.position if self.phase is Phase.TEST else len(self.streams["test"])

    def reports(self, every: int) -> Iterator[Progress]:
        """Run to the end, yielding the test stream's progress every ``every`` test windows and
        once at the end. The warm-up runs first, unreported, and a report waits until some test
        window is scored; without a test stream (``online.test_stream: false``, tuning on
        validation), the warm-up is reported every ``every`` windows instead. A run restored
        from a checkpoint continues where it stopped."""
        if every < 1:
            raise ValueError(f"report interval must be >= 1 (got {every})")
        while self.phase is Phase.WARMUP and not self.streams["test"]:
            left = len(self.streams["warmup"]) - self.position
            self.advance(min(every - self.position % every, left))  # stops at the warm-up's end
            if self.phase is Phase.WARMUP:
                yield self.progress()
        if self.phase is Phase.WARMUP:
            self.advance(len(self.streams["warmup"]) - self.position)
        while not self.done:
            self.advance(every - self.test_windows_done % every)
            if self.scores["test"].scored or self.done:
                yield self.progress()

    def test_window_mse(self, begin: int = 0) -> torch.Tensor:
        """Per-window test MSE of the windows scored so far, from window ``begin`` on."""
        return self.scores["test"].mse[begin : self.scores["test"].scored]

    def advance(self, max_windows: int | None = None) -> None:
        """Process up to ``max_windows`` more windows (all that remain when ``None``); a run
        that learns nothing takes a whole phase at once, from the cached forecasts."""
        budget = math.inf if max_windows is None else max_windows
        while not self.done and budget > 0:
            if not self.learner.trainable and self.base is not None:
                budget -= self._take_cached_forecasts()  # the whole phase at once
                continue
            starts = self.streams[self.phase.value]
            chunk = min(len(starts) - self.position, budget)
            self._stream(self.phase, self.position, self.position + int(chunk))
            budget -= chunk
            if self.position == len(starts):
                self._end_phase()

    def _stream(self, phase: Phase, first: int, stop: int) -> None:
        starts, scores = self.streams[phase.value], self.scores[phase.value]
        learner, series = self.learner, self.series
        horizon, seq_len = series.horizon, series.seq_len
        began = time.perf_counter()
        for j in range(first, stop):
            start = starts[j]
            series.reveal_until(start + seq_len)
            if learner.trainable:
                learner.update(series, start - horizon)
            forecast = learner.predict(series, start)
            scores.add(j, forecast, series)
            if phase is Phase.TEST and self.forecasts is not None:
                self.forecasts[j] = forecast
        self.seconds[phase] += time.perf_counter() - began
        self.position = stop
        scores.check_finite("validation" if phase is Phase.WARMUP else "test")

    def _take_cached_forecasts(self) -> int:
        """Nothing learns: every forecast of the current phase is the cached one, scored in one
        vectorised pass; the phase then ends. Returns how many windows it scored."""
        phase = self.phase
        starts, scores = self.streams[phase.value], self.scores[phase.value]
        if starts:  # none in a validation-only run's test phase
            self.series.reveal_until(starts[-1] + self.series.seq_len + self.series.horizon)
            first = starts[0] - self.base.first_start
            forecasts = self.base.forecasts[first : first + len(starts)]
            errors = forecasts - self.series.targets(starts)
            scores.mse.copy_(errors.pow(2).mean(dim=(1, 2)))
            scores.mae.copy_(errors.abs().mean(dim=(1, 2)))
            scores.scored = len(starts)
            scores.check_finite("validation" if phase is Phase.WARMUP else "test")
            if phase is Phase.TEST and self.forecasts is not None:
                self.forecasts.copy_(forecasts)
        self.position = len(starts)
        self._end_phase()
        return len(starts)

    def _end_phase(self) -> None:
        if self.phase is Phase.WARMUP:
            starts = self.streams["warmup"]
            self.series.reveal_until(starts[-1] + self.series.seq_len + self.series.horizon)
            self.scores["warmup"].finish(self.series)
            log.info("warm-up: %d validation windows in %.1f s", len(starts),
                     self.seconds["warmup"])
            self.learner.start_test()
            self.phase, self.position = Phase.TEST, 0
        else:
            starts = self.streams["test"]
            if starts:  # none without a test stream: nothing of the test segment is read
                self.series.reveal_until(starts[-1] + self.series.seq_len + self.series.horizon)
            self.scores["test"].finish(self.series)
            self.scores["test"].check_finite("test")
            self.phase = Phase.DONE

    def progress(self) -> Progress:
        learner = self.learner
        fill = (
            sum(m.memory.size / m.memory.cfg.capacity for m in learner.bank) / len(learner.bank)
            if learner.bank is not None else 0.0
        )
        gate = float(learner.gate_sum) / learner.corrected if learner.corrected else None
        return Progress(self.test_windows_done, len(self.streams["test"]),
                        self.scores["test"].scored, self.scores["test"].running_mse(),
                        self.seconds["test"], fill, gate, learner.probe.summary(),
                        self.scores["warmup"].running_mse())

    def result(self, *, partial: bool = False) -> RunResult:
        """The run's metrics and per-window scores; ``partial``: of a run ended before the end
        of its stream (futility stopping), over the test windows scored so far."""
        if not (self.done or partial):
            raise RuntimeError("the run has not finished: call advance() until done")
        test, learner = self.scores["test"], self.learner
        scored = test.scored
        mse = float(test.mse[:scored].mean())
        steps = self.test_windows_done
        warmup_steps = len(self.streams["warmup"]) if self.warmed_up else 0
        metrics = {
            "mse": mse,
            "mae": float(test.mae[:scored].mean()),
            "rmse": math.sqrt(mse),
            "steps": steps,
            "warmup_steps": warmup_steps,
            "warmup_mse": self.scores["warmup"].running_mse() if warmup_steps else None,
            "seconds_online": self.seconds["test"],
            "seconds_warmup": self.seconds["warmup"],
            "ms_per_step": 1000.0 * self.seconds["test"] / steps if steps else math.nan,
            "mean_gate": float(learner.gate_sum) / learner.corrected if learner.corrected
            else None,
            "corrected_fraction": learner.corrected / steps if steps else math.nan,
            "memory_entries": [m.memory.size for m in learner.bank] if learner.bank else [],
            "trainable_parameters": learner.trainable_parameters,
            "device_memory_mb": _peak_device_memory_mb(self.scores["test"].mse.device),
            "compiled": self.compiled,
            **learner.probe.summary(),
        }
        return RunResult(metrics, test.mse[:scored].cpu(), test.mae[:scored].cpu(),
                         None if self.forecasts is None else self.forecasts[:scored].cpu())

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, numbers and strings: loadable with ``torch.load(weights_only=True)``."""
        return {
            "format": _STATE_FORMAT,
            "phase": self.phase.value,
            "position": self.position,
            "clock": self.series.clock,
            "seconds": dict(self.seconds),
            "learner": self.learner.checkpoint_state(),
            "scores": {name: s.state_dict() for name, s in self.scores.items()},
            "forecasts": self.forecasts,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"unknown online-run state format {state.get('format')!r}")
        self.phase, self.position = Phase(state["phase"]), int(state["position"])
        self.series.clock = int(state["clock"])
        self.seconds = dict(state["seconds"])
        self.learner.load_checkpoint_state(state["learner"])
        for name, scores in self.scores.items():
            scores.load_state_dict(state["scores"][name])
        if self.forecasts is not None and state["forecasts"] is not None:
            self.forecasts.copy_(state["forecasts"])


def run_trial(
    cfg: TrialConfig,
    data: PreparedData,
    pretrained: Pretrained,
    *,
    base: BaseForecasts | None = None,
    progress: ProgressFn | None = None,
    progress_every: int = 1000,
    keep_forecasts: bool = False,
    encoder: dict[str, torch.Tensor] | None = None,
) -> RunResult:
    """Run warm-up (if on) and the test stream to the end; score every test window."""
    began = time.perf_counter()
    run = OnlineRun(cfg, data, pretrained, base, keep_forecasts=keep_forecasts, encoder=encoder)
    for report in run.reports(progress_every):
        if progress is not None:
            progress(report)
    result = run.result()
    result.metrics["seconds_total"] = time.perf_counter() - began
    return result
