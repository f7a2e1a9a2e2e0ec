"""One trial as a recipe: set up (:class:`TrialArtefacts`), stream, write results.

``hmem run`` (:func:`run_trial_and_save`), the Ray Tune trainable, the artefact tasks of a search
and the benchmarks all set a trial up through :class:`TrialArtefacts`, and write what it gives
through :func:`write_results`, so a trial gives the same numbers whichever way it was launched.
The results folder holds:

- ``metrics.json``: the scores, timings, the regime and the trial's identity;
- ``curve.csv``: per-window test MSE and MAE (the online learning curve);
- ``config.json``: the fully resolved config, so that every number can be reproduced;
- ``forecasts.npz`` (``save_forecasts``): ``start_row [N]``, each scored test window's first
  input row in the file, and ``forecast [N, H, C]``, its forecast in the scaled space the metrics
  use. Anyone can check leakage from outside with it: perturb the file from row ``T`` on and
  rerun; every forecast with ``start_row <= T - seq_len`` must be bit-identical.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hmem.artefacts import (
    BaseForecasts,
    Pretrained,
    load_or_compute_base_forecasts,
    load_or_pretrain,
)
from hmem.config import TrialConfig
from hmem.data.splits import PreparedData, prepare
from hmem.online.runner import OnlineRun, ProgressFn, RunResult, resolve_device, run_trial
from hmem.records import METRICS_FILE, TrialMetrics
from hmem.spaces import Cell
from hmem.variants.contrastive import PretrainedEncoder, load_or_pretrain_encoder

log = logging.getLogger(__name__)


@dataclass
class TrialArtefacts:
    """Everything a trial needs before its online run: the prepared data, the pretrained
    backbone, its base forecasts (when the backbone stays frozen) and B2's pretrained encoder
    (when the config uses one). Each comes from the content-hashed cache, or is built once and
    stored there; in a search they are built by one Ray task and shipped (``tune.artefacts``)."""

    data: PreparedData
    pretrained: Pretrained
    base: BaseForecasts | None = None
    encoder: PretrainedEncoder | None = None

    @classmethod
    def load_or_build(cls, cfg: TrialConfig, data_dir: str | os.PathLike | None = None,
                      cache_dir: str | os.PathLike | None = None, *,
                      data: PreparedData | None = None,
                      base_forecasts: bool | None = None) -> TrialArtefacts:
        """``base_forecasts`` forces them on or off (a search's task builds them when any of its
        trials needs them); by default the config decides."""
        data = prepare(cfg.data, data_dir) if data is None else data
        pretrained = load_or_pretrain(cfg, data, cache_dir)
        wants_base = cfg.needs_base_forecasts if base_forecasts is None else base_forecasts
        base = load_or_compute_base_forecasts(pretrained, data) if wants_base else None
        encoder = (load_or_pretrain_encoder(cfg, data, pretrained, cache_dir)
                   if cfg.uses_pretrained_encoder else None)
        return cls(data, pretrained, base, encoder)

    def online_run(self, cfg: TrialConfig, *, keep_forecasts: bool = False) -> OnlineRun:
        return OnlineRun(cfg, self.data, self.pretrained, self.base,
                         keep_forecasts=keep_forecasts,
                         encoder=self.encoder.state if self.encoder else None)


def describe(
    cfg: TrialConfig,
    space: str,
    cell: Cell,
    pretrained: Pretrained,
    encoder: PretrainedEncoder | None = None,
) -> dict[str, Any]:
    """Which trial this is and which regime its numbers come from (merged into metrics.json)."""
    return {
        "space": space,
        "variant": cell.variant,
        "dataset": cell.dataset,
        "seed": cell.seed,
        "regime": cfg.regime,
        "direction": cfg.direction,
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
        "encoder_key": encoder.key if encoder else None,
        "encoder_pretrain_seconds": encoder.meta["pretrain_seconds"] if encoder else None,
    }


def write_config(out: Path, cfg: TrialConfig) -> None:
    """``config.json``, written before any work, so even a failed trial says what it ran."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.model_dump(), indent=2))


def write_results(out: Path, cfg: TrialConfig, data: PreparedData, result: RunResult) -> None:
    """``config.json``, ``metrics.json`` (:class:`hmem.records.TrialMetrics`), ``curve.csv``
    (and ``forecasts.npz`` when the result kept them) of a finished trial."""
    write_config(out, cfg)
    (out / METRICS_FILE).write_text(TrialMetrics.new(result.metrics).to_json())
    starts = data.segments["test"].window_starts(data.seq_len, data.horizon)[: len(result.curve)]
    if result.forecasts is not None:  # plain arrays: np.load(..., allow_pickle=False) reads them
        np.savez_compressed(out / "forecasts.npz", start_row=np.asarray(starts, dtype=np.int64),
                            forecast=result.forecasts.numpy())
    pd.DataFrame(
        {
            "window": range(len(result.curve)),
            "start_row": list(starts),
            "forecast_origin": data.dates[[s + data.seq_len - 1 for s in starts]],
            "mse": result.curve.numpy(),
            "mae": result.curve_mae.numpy(),
        }
    ).to_csv(out / "curve.csv", index=False)


def run_trial_and_save(
    cfg: TrialConfig,
    space: str,
    cell: Cell,
    out_dir: str | os.PathLike,
    artefacts: TrialArtefacts,
    *,
    progress: ProgressFn | None = None,
    progress_every: int = 1000,
    save_forecasts: bool = False,
) -> RunResult:
    """Stream the trial on ``artefacts`` and write its results folder.

    Sets no process-wide state: the caller (``hmem run``) chooses torch's thread count."""
    out = Path(out_dir)
    result = run_trial(cfg, artefacts.data, artefacts.pretrained, base=artefacts.base,
                       progress=progress, progress_every=progress_every,
                       keep_forecasts=save_forecasts,
                       encoder=artefacts.encoder.state if artefacts.encoder else None)
    result.metrics.update(describe(cfg, space, cell, artefacts.pretrained, artefacts.encoder))
    write_results(out, cfg, artefacts.data, result)
    log.info("results written to %s", out)
    return result
