"""Pretrained backbones and their base-forecast caches, stored once under a content-hashed key.

The key hashes what the weights depend on: the data file's bytes, the split borders, the
backbone config, ``seq_len``, ``H`` and the pretraining config (its seed included). A second
request with the same key loads instead of training. Entries are written to a temporary folder
and renamed into place, so concurrent trials never see half an entry; loading uses
``torch.load(..., weights_only=True)`` and never unpickles code.

Every file of an entry has its SHA-256 in the entry's ``meta.json``, checked on load. A damaged
entry (a full disk, a half-copied shared volume, a crashed NFS client) is logged, moved aside as
``<key>.damaged-<time>`` and rebuilt; where it cannot be moved (a read-only cache), loading fails
with one sentence naming the entry and what to do.

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

from hmem.backbones import load_backbone
from hmem.backbones.pretrain import pretrain_backbone
from hmem.config import TrialConfig
from hmem.data.loading import file_sha256
from hmem.data.splits import PreparedData
from hmem.data.windows import WindowBatcher
from hmem.errors import HmemError

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


class DamagedArtefact(HmemError):
    """A cache entry is damaged and cannot be moved aside to be rebuilt."""


def save_entry(directory: Path, files: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``files`` (name -> tensors, saved with ``torch.save``) and ``meta.json``, with each
    file's SHA-256, as one entry that appears atomically."""
    tmp = atomic_dir(directory)
    for name, payload in files.items():
        torch.save(payload, tmp / name)
    meta = {**meta, "sha256": {name: file_sha256(tmp / name) for name in files}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    publish(tmp, directory)


def load_entry(directory: Path, name: str) -> tuple[Any, dict[str, Any]] | None:
    """File ``name`` of the entry and its meta, verified; ``None`` when there is no entry, or when
    it was damaged and has been moved aside (the caller rebuilds it)."""
    if not directory.exists():
        return None
    try:
        meta = json.loads((directory / "meta.json").read_text())
        path = directory / name
        expected = meta.get("sha256", {}).get(name)
        if expected is not None and file_sha256(path) != expected:
            raise ValueError(f"{name} does not match the SHA-256 in meta.json")
        return torch.load(path, map_location="cpu", weights_only=True), meta
    except (OSError, ValueError, RuntimeError, KeyError, AttributeError) as err:
        aside = None
        try:  # an empty, uniquely named folder that the rename replaces
            aside = Path(tempfile.mkdtemp(dir=directory.parent, prefix=(
                f"{directory.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-")))
            os.rename(directory, aside)
        except OSError as rename_err:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
            raise DamagedArtefact(
                f"cache entry {directory} is damaged ({err}) and cannot be moved aside "
                f"({rename_err.strerror}): delete it, or rebuild it where the cache is writable "
                f"(hmem pretrain / hmem pretrain-encoder with the same config)") from None
        log.warning("cache entry %s is damaged (%s): moved aside to %s; rebuilding it",
                    directory, err, aside)
        return None


def load_or_pretrain(
    cfg: TrialConfig, data: PreparedData, cache_dir: str | os.PathLike | None = None
) -> Pretrained:
    key = backbone_key(cfg, data)
    directory = resolve_cache_dir(cache_dir) / "backbones" / key
    entry = load_entry(directory, "weights.pt")
    if entry is not None:
        state, meta = entry
        model = load_backbone(cfg.backbone, data.seq_len, data.horizon, state)
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
    save_entry(directory, {"weights.pt": model.state_dict()}, meta)
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
    """The frozen backbone's forecasts, from the entry when they are there and intact (their
    SHA-256 is kept beside them), else computed and stored."""
    first, last = online_window_range(data)
    path = pretrained.directory / "base_forecasts.pt"
    checksum = path.with_name(path.name + ".sha256")
    if path.is_file():
        try:
            if checksum.exists() and checksum.read_text().strip() != file_sha256(path):
                raise ValueError("it does not match its SHA-256")
            stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if int(stored["first_start"]) == first and len(stored["forecasts"]) == last - first + 1:
                log.info("base forecasts: loaded %d windows from %s", last - first + 1, path)
                return BaseForecasts(first, stored["forecasts"])
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            log.warning("base forecasts %s are damaged (%s): computing them again", path, err)
    started = time.perf_counter()
    forecasts = compute_base_forecasts(pretrained.model, data, first, last)
    log.info("base forecasts: computed %d windows in %.1f s", len(forecasts),
             time.perf_counter() - started)
    fd, tmp = tempfile.mkstemp(prefix=".base_forecasts.", dir=pretrained.directory)
    os.close(fd)
    torch.save({"first_start": torch.tensor(first), "forecasts": forecasts}, tmp)
    fd, tmp_sum = tempfile.mkstemp(prefix=".base_forecasts.sha256.", dir=pretrained.directory)
    os.close(fd)
    Path(tmp_sum).write_text(file_sha256(Path(tmp)))
    os.replace(tmp_sum, checksum)
    os.replace(tmp, path)
    return BaseForecasts(first, forecasts)
