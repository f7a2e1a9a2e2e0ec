"""One trial as a recipe: set up (data, pretrained backbone), stream, write results.

``hmem run`` and the Ray Tune trainable both call :func:`run_trial_and_save`, so a trial gives the
same numbers whichever way it was launched. The results folder holds:

- ``metrics.json``: the scores, timings, the regime and the trial's identity;
- ``curve.csv``: per-window test MSE and MAE (the online learning curve);
- ``config.json``: the fully resolved config, so that every number can be reproduced.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from hmem.artefacts import load_or_pretrain
from hmem.config import TrialConfig
from hmem.data.splits import prepare
from hmem.online.runner import ProgressFn, RunResult, resolve_device, run_trial

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialIdentity:
    """Names that say which cell of a search space a trial is."""

    space: str
    variant: str
    dataset: str
    seed: int

    def label(self) -> str:
        dataset = Path(self.dataset).name.split(".")[0] if "/" in self.dataset else self.dataset
        return f"{self.variant}-{dataset}-s{self.seed}"


def run_trial_and_save(
    cfg: TrialConfig,
    identity: TrialIdentity,
    out_dir: str | os.PathLike,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    progress: ProgressFn | None = None,
    progress_every: int = 1000,
) -> RunResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.model_dump(), indent=2))

    data = prepare(cfg.data, data_dir)
    torch.set_num_threads(cfg.runtime.pretrain_threads or os.cpu_count() or 1)
    pretrained = load_or_pretrain(cfg, data, cache_dir)
    torch.set_num_threads(cfg.runtime.threads)
    result = run_trial(cfg, data, pretrained, progress=progress, progress_every=progress_every)

    result.metrics.update(
        {
            "space": identity.space,
            "variant": identity.variant,
            "dataset": identity.dataset,
            "seed": identity.seed,
            "regime": cfg.regime,
            "backbone_frozen": cfg.backbone.frozen_online,
            "backbone_online_lr": cfg.online.lr * cfg.backbone.online_lr_scale,
            "chrc": cfg.chrc.enabled,
            "backbone_key": pretrained.key,
            "pretrain_cached": pretrained.loaded_from_cache,
            "pretrain_seconds": pretrained.meta["pretrain_seconds"],
            "pretrain_best_val_mse": pretrained.meta["best_val_mse"],
            "pretrain_epochs": pretrained.meta["epochs_run"],
            "device": str(resolve_device(cfg)),
            "threads": cfg.runtime.threads,
        }
    )
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    starts = data.segments["test"].window_starts(data.seq_len, data.horizon)[: len(result.curve)]
    pd.DataFrame(
        {
            "window": range(len(result.curve)),
            "start_row": list(starts),
            "forecast_origin": data.dates[[s + data.seq_len - 1 for s in starts]],
            "mse": result.curve.cpu().numpy(),
            "mae": result.curve_mae.cpu().numpy(),
        }
    ).to_csv(out / "curve.csv", index=False)
    log.info("results written to %s", out)
    return result
