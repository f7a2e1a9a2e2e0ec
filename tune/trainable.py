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

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.tune
import torch
from torch.utils.tensorboard import SummaryWriter

from hmem.artefacts import Pretrained, backbone_key, load_or_pretrain
from hmem.config import TrialConfig, deep_merge
from hmem.data.splits import PreparedData, prepare
from hmem.online.runner import OnlineRun
from hmem.spaces import Cell, SearchSpace, dotted_to_tree
from hmem.trial import describe, write_results
from hmem.variants.contrastive import PretrainedEncoder, load_or_pretrain_encoder
from tune.artefacts import unpack

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

    def search_space(self) -> SearchSpace:
        space = SearchSpace.model_validate(self.space)
        space._source = self.space_source
        return space


@dataclass
class _Trial:
    space: SearchSpace
    cell: Cell
    cfg: TrialConfig
    data: PreparedData
    pretrained: Pretrained
    encoder: PretrainedEncoder | None
    backbone_source: str  # "object_store", or "trial" when it had to load or pretrain itself
    out: Path  # the trial's working directory; Ray syncs it into the trial folder


def hmem_trainable(params: dict[str, Any], context: TrialContext) -> None:
    started = time.perf_counter()
    trial, base = _set_up(params, context)
    run = OnlineRun(trial.cfg, trial.data, trial.pretrained, base,
                    encoder=trial.encoder.state if trial.encoder else None)
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            run.load_state_dict(torch.load(Path(folder) / STATE_FILE, weights_only=True))
        # The clock restarts with the process; the checkpoint carries the online time before.
        started -= sum(run.seconds.values())
        log.info("trial %s: resumed at test window %d", trial.cell.label(),
                 run.test_windows_done)

    writer = SummaryWriter(str(trial.out / "tensorboard"))
    written = run.scores["test"].scored
    if run.phase == "warmup":
        run.advance(len(run.streams["warmup"]) - run.position)
    report_every, checkpoint_every = trial.space.report_every, trial.space.checkpoint_every
    while not run.done:
        run.advance(report_every - run.test_windows_done % report_every)
        if run.scores["test"].scored == 0 and not run.done:
            continue  # nothing revealed yet to report on
        written = _write_curve(writer, run, written)
        metrics = _running_metrics(run)
        if run.done:
            writer.close()
            ray.tune.report({**metrics, **_finish(trial, run, started)})
        elif run.test_windows_done % checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(run.state_dict(), Path(folder) / STATE_FILE)
                ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))
        else:
            ray.tune.report(metrics)


def _set_up(params: dict[str, Any], context: TrialContext):
    """Resolve the trial's config, read its data and take its backbone from the object store."""
    space = context.search_space()
    cell = Cell(**params["cell"])
    sampled = dotted_to_tree(params.get("sampled", {}))
    cfg = space.trial_config(cell.variant, cell.dataset, cell.seed,
                             deep_merge(context.overrides, sampled))
    out = Path.cwd()
    (out / "config.json").write_text(json.dumps(cfg.model_dump(), indent=2))  # before any work
    data = prepare(cfg.data, context.data_dir)
    ref = context.backbones.get(backbone_key(cfg, data))
    if ref is not None:
        pretrained, base, encoder = unpack(ray.get(ref), cfg, data)
        source = "object_store"
    else:  # a sampled value changed the backbone itself: nothing could be shipped for it
        log.warning("trial %s: its backbone was not shipped; loading or pretraining it here",
                    cell.label())
        pretrained, base, source = load_or_pretrain(cfg, data, context.cache_dir), None, "trial"
        encoder = None
        if cfg.chrc.enabled and cfg.chrc.contrastive.enabled:
            encoder = load_or_pretrain_encoder(cfg, data, pretrained, context.cache_dir)
    torch.set_num_threads(cfg.runtime.threads)
    return _Trial(space, cell, cfg, data, pretrained, encoder, source, out), base


def _running_metrics(run: OnlineRun) -> dict[str, Any]:
    progress = run.progress()
    return {
        "mse": progress.running_mse,
        "windows": progress.windows_done,
        "scored": progress.scored,
        "memory_fill": progress.memory_fill,
        "mean_gate": _number(progress.mean_gate),
        "ms_per_step": progress.ms_per_step,
        **progress.acted,
        "pid": os.getpid(),
        "node": ray.get_runtime_context().get_node_id(),
    }


def _finish(trial: _Trial, run: OnlineRun, started: float) -> dict[str, Any]:
    """Write the trial's results folder; return its scalar metrics for the last report."""
    result = run.result()
    result.metrics["seconds_total"] = time.perf_counter() - started
    result.metrics.update(describe(trial.cfg, trial.space.name, trial.cell, trial.pretrained,
                                   trial.encoder))
    result.metrics.update(backbone_source=trial.backbone_source,
                          node=ray.get_runtime_context().get_node_id())
    write_results(trial.out, trial.cfg, trial.data, result)
    scalars = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str, bool))}
    return {**scalars, "mean_gate": _number(result.metrics["mean_gate"])}


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _write_curve(writer: SummaryWriter, run: OnlineRun, written: int) -> int:
    """Add the per-window test MSE of windows scored since the last report."""
    scores = run.scores["test"]
    for j in range(written, scores.scored):
        value = float(scores.mse[j])
        if math.isfinite(value):
            writer.add_scalar("test/window_mse", value, global_step=j)
    writer.flush()
    return scores.scored
