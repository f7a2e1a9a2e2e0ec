"""The H-Mem trial as a Ray Tune function trainable: set up, stream, report.

Every ``report_every`` test windows it reports the running test MSE (over the windows whose
targets are revealed), memory fill and the mean applied gate; every ``checkpoint_every`` windows
the report carries a checkpoint of the whole online state (``OnlineRun.state_dict``), from which
a restarted trial continues with the same numbers. The last report carries the metrics of
``hmem run``, and the trial's folder receives the same ``metrics.json``, ``curve.csv`` and
``config.json``, plus TensorBoard events of the per-window test MSE. The trial uses the GPU Ray
gave it, if any (``runtime.device: auto``), through the same code path as the CPU.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.tune
import torch
from torch.utils.tensorboard import SummaryWriter

from analysis.futility import FutilityMonitor, Look
from hmem.artefacts import backbone_key
from hmem.config import TrialConfig, deep_merge, dotted_to_tree
from hmem.data.splits import prepare
from hmem.directions import Direction
from hmem.online.runner import OnlineRun, Progress
from hmem.spaces import Cell, SearchSpace
from hmem.trial import TrialArtefacts, describe, write_config, write_results
from tune.artefacts import unpack
from tune.futility import STOP, pair_key, rule_of

log = logging.getLogger(__name__)

STATE_FILE = "online_state.pt"


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one search shares; handed over by ``tune.with_parameters``."""

    space: dict[str, Any]  # the search space as launched (a resume uses this copy, not the file)
    space_source: str
    data_dir: str | None
    cache_dir: str
    backbones: dict[str, ray.ObjectRef]  # backbone key -> shipped artefacts
    overrides: dict[str, Any]  # --set overrides applied to every trial
    controls: dict[tuple, np.ndarray] = field(default_factory=dict)  # futility: pair key -> losses

    def search_space(self) -> SearchSpace:
        space = SearchSpace.model_validate(self.space)
        space._source = self.space_source
        return space


@dataclass
class _Trial:
    space: SearchSpace
    cell: Cell
    cfg: TrialConfig
    artefacts: TrialArtefacts
    backbone_source: str  # "object_store", or "trial" when it had to load or pretrain itself
    out: Path  # the trial's working directory; Ray syncs it into the trial folder


def hmem_trainable(params: dict[str, Any], context: TrialContext) -> None:
    """Set up, then for each progress report of the online run: a Tune report (with a checkpoint
    every ``checkpoint_every`` windows, with the trial's results at the end)."""
    started = time.perf_counter()
    trial = _set_up(params, context)
    run = trial.artefacts.online_run(trial.cfg)
    started -= _restore(run, trial)
    monitor = _futility_monitor(trial, context)
    writer = SummaryWriter(str(trial.out / "tensorboard"))
    written = run.progress().scored  # windows already in TensorBoard before a restore
    for progress in run.reports(trial.space.report_every):
        written = _write_curve(writer, run, written)
        metrics = _running_metrics(progress)
        look = (monitor.look(run.test_window_mse().cpu().numpy())
                if monitor is not None and not run.done else None)
        if look is not None:
            metrics.update({"futility/gain": look.bound.gain, "futility/bound": look.bound.bound})
        if run.done:
            writer.close()
            ray.tune.report({**metrics, **_finish(trial, run, started)})
        elif look is not None and look.stop:  # results first: the stopper ends the trial here
            writer.close()
            ray.tune.report({**metrics, **_finish(trial, run, started, look), STOP: True})
        elif progress.windows_done and progress.windows_done % trial.space.checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(run.state_dict(), Path(folder) / STATE_FILE)
                ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))
        else:
            ray.tune.report(metrics)


def _restore(run: OnlineRun, trial: _Trial) -> float:
    """Continue from Ray's checkpoint, if any; returns the online seconds it already carries
    (the clock restarts with the process)."""
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is None:
        return 0.0
    with checkpoint.as_directory() as folder:
        run.load_state_dict(torch.load(Path(folder) / STATE_FILE, weights_only=True))
    log.info("trial %s: resumed at test window %d", trial.cell.label(), run.test_windows_done)
    return sum(run.seconds.values())


def _set_up(params: dict[str, Any], context: TrialContext):
    """Resolve the trial's config, read its data and take its backbone from the object store."""
    space = context.search_space()
    cell = Cell(**params["cell"])
    sampled = dotted_to_tree(params.get("sampled", {}))
    cfg = space.trial_config(cell.variant, cell.dataset, cell.seed,
                             deep_merge(context.overrides, sampled))
    out = Path.cwd()
    write_config(out, cfg)
    data = prepare(cfg.data, context.data_dir)
    ref = context.backbones.get(backbone_key(cfg, data))
    if ref is not None:
        artefacts, source = unpack(ray.get(ref), cfg, data), "object_store"
    else:  # a sampled value changed the backbone itself: nothing could be shipped for it
        log.warning("trial %s: its backbone was not shipped; loading or pretraining it here",
                    cell.label())
        artefacts = TrialArtefacts.load_or_build(cfg, cache_dir=context.cache_dir, data=data)
        source = "trial"
    # Tune reuses a finished trial's worker (reuse_actors): whatever a process keeps between
    # trials is set afresh here, so a trial gives the numbers of a fresh process. Compiled
    # graphs are dropped: graphs left by earlier trials would count towards Dynamo's
    # recompile limit, past which a long trial would silently run eager.
    torch.set_num_threads(cfg.runtime.threads)
    torch.compiler.reset()
    return _Trial(space, cell, cfg, artefacts, source, out)


def _running_metrics(progress: Progress) -> dict[str, Any]:
    return {
        "mse": progress.running_mse,
        "warmup_mse": progress.warmup_mse,
        "windows": progress.windows_done,
        "scored": progress.scored,
        "memory_fill": progress.memory_fill,
        "mean_gate": _number(progress.mean_gate),
        "ms_per_step": progress.ms_per_step,
        **progress.acted,
        "pid": os.getpid(),
        "node": ray.get_runtime_context().get_node_id(),
    }


def _futility_monitor(trial: _Trial, context: TrialContext) -> FutilityMonitor | None:
    """The trial's futility looks, when stopping is on and its control has run."""
    stopping = trial.space.stopping
    if not stopping.enabled or trial.cfg.direction in (Direction.CONTROL, Direction.BASELINE):
        return None
    cfg = trial.cfg
    control = context.controls.get(pair_key(trial.cell.dataset, cfg.seed,
                                            trial.artefacts.pretrained.key, cfg.backbone_regime))
    if control is None:
        log.warning("trial %s: no finished control run with its dataset, seed and backbone in "
                    "%s; it runs to the end", trial.cell.label(), ", ".join(stopping.controls))
        return None
    return FutilityMonitor(rule_of(stopping), control, trial.cfg.data.horizon)


def _finish(trial: _Trial, run: OnlineRun, started: float,
            stopped: Look | None = None) -> dict[str, Any]:
    """Write the trial's results folder; return its scalar metrics for the last report."""
    result = run.result(partial=stopped is not None)
    result.metrics["seconds_total"] = time.perf_counter() - started
    result.metrics["stopped_early"] = stopped.record() if stopped is not None else None
    result.metrics.update(describe(trial.cfg, trial.space.name, trial.cell,
                                   trial.artefacts.pretrained, trial.artefacts.encoder))
    result.metrics.update(backbone_source=trial.backbone_source,
                          node=ray.get_runtime_context().get_node_id())
    write_results(trial.out, trial.cfg, trial.artefacts.data, result)
    scalars = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str, bool))}
    return {**scalars, "mean_gate": _number(result.metrics["mean_gate"])}


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _write_curve(writer: SummaryWriter, run: OnlineRun, written: int) -> int:
    """Add the per-window test MSE of windows scored since the last report."""
    values = run.test_window_mse(written).tolist()
    for j, value in enumerate(values, start=written):
        if math.isfinite(value):
            writer.add_scalar("test/window_mse", value, global_step=j)
    writer.flush()
    return written + len(values)
