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

from hmem.artefacts import backbone_key, load_or_pretrain
from hmem.config import deep_merge
from hmem.data.splits import prepare
from hmem.online.runner import OnlineRun
from hmem.spaces import Cell, SearchSpace, dotted_to_tree
from hmem.trial import describe, write_results
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


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def hmem_trainable(params: dict[str, Any], context: TrialContext) -> None:
    started = time.perf_counter()
    space = context.search_space()
    cell = Cell(**params["cell"])
    overrides = dotted_to_tree(params.get("sampled", {}))
    cfg = space.trial_config(cell.variant, cell.dataset, cell.seed,
                             deep_merge(context.overrides, overrides))
    out = Path.cwd()  # the trial's working directory; Ray syncs it into the trial folder
    (out / "config.json").write_text(json.dumps(cfg.model_dump(), indent=2))
    data = prepare(cfg.data, context.data_dir)
    ref = context.backbones.get(backbone_key(cfg, data))
    if ref is not None:
        pretrained, base = unpack(ray.get(ref), cfg, data)
        source = "object_store"
    else:  # a sampled value changed the backbone itself: nothing could be shipped for it
        log.warning("trial %s: its backbone was not shipped; loading or pretraining it here",
                    cell.label())
        pretrained, base, source = load_or_pretrain(cfg, data, context.cache_dir), None, "trial"
    torch.set_num_threads(cfg.runtime.threads)

    run = OnlineRun(cfg, data, pretrained, base)
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            run.load_state_dict(torch.load(Path(folder) / STATE_FILE, weights_only=True))
        log.info("trial %s: resumed at test window %d", cell.label(), run.test_windows_done)

    writer = _curve_writer(out)
    written = run.scores["test"].scored
    if run.phase == "warmup":
        run.advance(len(run.streams["warmup"]) - run.position)
    report_every, checkpoint_every = space.report_every, space.checkpoint_every
    while not run.done:
        run.advance(report_every - run.test_windows_done % report_every)
        progress = run.progress()
        if progress.scored == 0 and not run.done:
            continue  # nothing revealed yet to report on
        written = _write_curve(writer, run, written)
        metrics = {
            "mse": progress.running_mse,
            "windows": progress.windows_done,
            "scored": progress.scored,
            "memory_fill": progress.memory_fill,
            "mean_gate": _number(progress.mean_gate),
            "ms_per_step": progress.ms_per_step,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
        }
        if run.done:
            result = run.result()
            result.metrics["seconds_total"] = time.perf_counter() - started
            result.metrics.update(describe(cfg, space.name, cell, pretrained))
            result.metrics.update(backbone_source=source, node=metrics["node"])
            write_results(out, cfg, data, result)
            metrics.update({k: v for k, v in result.metrics.items()
                            if isinstance(v, (int, float, str, bool))})
            metrics["mean_gate"] = _number(result.metrics["mean_gate"])
            writer.close()
            ray.tune.report(metrics)
        elif progress.windows_done % checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(run.state_dict(), Path(folder) / STATE_FILE)
                ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))
        else:
            ray.tune.report(metrics)


def _curve_writer(out: Path) -> SummaryWriter:
    return SummaryWriter(str(out / "tensorboard"))


def _write_curve(writer: SummaryWriter, run: OnlineRun, written: int) -> int:
    """Add the per-window test MSE of windows scored since the last report."""
    scores = run.scores["test"]
    for j in range(written, scores.scored):
        value = float(scores.mse[j])
        if math.isfinite(value):
            writer.add_scalar("test/window_mse", value, global_step=j)
    writer.flush()
    return scores.scored
