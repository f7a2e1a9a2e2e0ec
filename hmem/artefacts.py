"""Pretrained backbones and their base-forecast caches, stored once under a content-hashed key.

The key hashes what the weights depend on: the data file's bytes, the split borders, the
backbone config, ``seq_len``, ``H`` and the pretraining config (its seed included). A second
request with the same key loads instead of training. Entries are written to a temporary folder
and renamed into place, so concurrent trials never see half an entry; loading uses
``torch.load(..., weights_only=True)`` and never unpickles code.

When the backbone is frozen online, its forecasts never change: they are computed for every
window the online loop can touch, in large batches, and stored beside the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hmem.backbones import build_backbone
from hmem.backbones.pretrain import pretrain_backbone
from hmem.config import TrialConfig
from hmem.data.splits import PreparedData
from hmem.data.windows import WindowBatcher

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "HMEM_CACHE_DIR"
_FORMAT = 1  # bump when what is stored (or the backbones' code) changes meaning
_FORECAST_BATCH = 512


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``--cache-dir``, then ``$HMEM_CACHE_DIR``, then ``~/.cache/hmem``."""
    chosen = cache_dir or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "hmem"
    return Path(chosen).expanduser()


def backbone_key(cfg: TrialConfig, data: PreparedData) -> str:
    spec = {
        "format": _FORMAT,
        "data": data.content_hash,
        "dataset": data.name,
        "split": data.split_spec(),
        "seq_len": data.seq_len,
        "horizon": data.horizon,
        "backbone": cfg.backbone.model_dump(exclude={"online_lr_scale"}),
        "pretrain": cfg.pretrain.model_dump(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Pretrained:
    """A pretrained backbone (in eval mode) and what is known about how it was made."""

    key: str
    directory: Path
    model: nn.Module
    meta: dict[str, Any]
    loaded_from_cache: bool


@dataclass
class BaseForecasts:
    """Frozen-backbone forecasts of windows ``first_start .. first_start + len - 1``."""

    first_start: int
    forecasts: torch.Tensor  # [N, H, C]

    def __getitem__(self, start: int) -> torch.Tensor:
        return self.forecasts[start - self.first_start]

    def to(self, device: torch.device) -> BaseForecasts:
        return BaseForecasts(self.first_start, self.forecasts.to(device))


def atomic_dir(final: Path) -> Path:
    """A fresh temporary folder beside ``final``, to fill and then :func:`publish`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))


def publish(tmp: Path, final: Path) -> None:
    """Rename a filled temporary folder into place; if another process won, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError:  # another process published the same key first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def load_or_pretrain(
    cfg: TrialConfig, data: PreparedData, cache_dir: str | os.PathLike | None = None
) -> Pretrained:
    key = backbone_key(cfg, data)
    directory = resolve_cache_dir(cache_dir) / "backbones" / key
    model = build_backbone(cfg.backbone, data.seq_len, data.horizon)
    if (directory / "meta.json").is_file():
        state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        meta = json.loads((directory / "meta.json").read_text())
        log.info("backbone %s: loaded from cache %s (pretrained in %.1f s)", key, directory,
                 meta["pretrain_seconds"])
        return Pretrained(key, directory, model, meta, loaded_from_cache=True)

    log.info("backbone %s: not in cache, pretraining on %s", key, data.name)
    model, report = pretrain_backbone(cfg, data)
    meta = {
        "key": key,
        "dataset": data.name,
        "data_sha256": data.content_hash,
        "split": data.split_spec(),
        "seq_len": data.seq_len,
        "horizon": data.horizon,
        "backbone": cfg.backbone.model_dump(exclude={"online_lr_scale"}),
        "pretrain": cfg.pretrain.model_dump(),
        "pretrain_seconds": report.seconds,
        "epochs_run": report.epochs_run,
        "best_epoch": report.best_epoch,
        "best_val_mse": report.best_val_mse,
        "history": report.history,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    tmp = atomic_dir(directory)
    torch.save(model.state_dict(), tmp / "weights.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    publish(tmp, directory)
    log.info("backbone %s: pretrained in %.1f s (best validation MSE %.4f at epoch %d), saved to "
             "%s", key, report.seconds, report.best_val_mse, report.best_epoch, directory)
    return Pretrained(key, directory, model, meta, loaded_from_cache=False)


def online_window_range(data: PreparedData) -> tuple[int, int]:
    """First and last window start the online loop may touch (recent windows included)."""
    first = max(0, data.segments["val"].start - data.horizon)
    last = data.segments["test"].window_starts(data.seq_len, data.horizon)[-1]
    return first, last


@torch.no_grad()
def compute_base_forecasts(model: nn.Module, data: PreparedData, first: int, last: int
                           ) -> torch.Tensor:
    model.eval()
    batcher = WindowBatcher(data)
    starts = torch.arange(first, last + 1)
    out = torch.empty(len(starts), data.horizon, data.n_vars)
    for i, chunk in enumerate(starts.split(_FORECAST_BATCH)):
        x, marks = batcher.inputs(chunk)
        out[i * _FORECAST_BATCH : i * _FORECAST_BATCH + len(chunk)] = model(x, marks)
    return out


def load_or_compute_base_forecasts(pretrained: Pretrained, data: PreparedData) -> BaseForecasts:
    first, last = online_window_range(data)
    path = pretrained.directory / "base_forecasts.pt"
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if int(stored["first_start"]) == first and len(stored["forecasts"]) == last - first + 1:
            log.info("base forecasts: loaded %d windows from %s", last - first + 1, path)
            return BaseForecasts(first, stored["forecasts"])
    started = time.perf_counter()
    forecasts = compute_base_forecasts(pretrained.model, data, first, last)
    log.info("base forecasts: computed %d windows in %.1f s", len(forecasts),
             time.perf_counter() - started)
    fd, tmp = tempfile.mkstemp(prefix=".base_forecasts.", dir=pretrained.directory)
    os.close(fd)
    torch.save({"first_start": torch.tensor(first), "forecasts": forecasts}, tmp)
    os.replace(tmp, path)
    return BaseForecasts(first, forecasts)
