"""B2: a POGT encoder pretrained by contrastive learning, then frozen online (plan 3.3).

Windows whose frozen-backbone errors look alike should have close POGT features, so that
retrieving by feature retrieves similar errors. On the train and validation windows (everything
before the test stream):

1. the pretrained backbone's error ``y - y_hat`` of every window is computed;
2. the positive of a window is its nearest window in error space (L2), excluding the ``H``
   windows on either side, whose targets overlap its own;
3. the encoder (CHRC's architecture) learns with InfoNCE: in a batch of anchors, each anchor's
   feature must pick its positive's feature among the batch's positives (the rest are its
   negatives), at ``temperature``.

The result is cached like a backbone, under a key that adds the encoder's architecture and this
config to the backbone's key; online, every bucket's encoder starts from it and stays frozen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hmem.artefacts import Pretrained, load_entry, resolve_cache_dir, save_entry
from hmem.chrc import POGTEncoder, pogt_length
from hmem.config import TrialConfig
from hmem.data.splits import PreparedData
from hmem.data.windows import WindowBatcher
from hmem.seeding import seeded

log = logging.getLogger(__name__)

_FORMAT = 1
_DISTANCE_CHUNK = 1024


@dataclass
class PretrainedEncoder:
    key: str
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    loaded_from_cache: bool


def encoder_key(cfg: TrialConfig, backbone_key: str) -> str:
    spec = {
        "format": _FORMAT,
        "backbone": backbone_key,
        "architecture": {k: cfg.chrc.model_dump()[k]
                         for k in ("feature_dim", "hidden_dim", "pogt_ratio")},
        "contrastive": cfg.chrc.contrastive.model_dump(exclude={"enabled"}),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def build_encoder(cfg: TrialConfig, data: PreparedData) -> POGTEncoder:
    c = cfg.chrc
    return POGTEncoder(data.n_vars, pogt_length(c, data.horizon), c.hidden_dim, c.feature_dim)


@torch.no_grad()
def nearest_positives(errors: torch.Tensor, exclusion: int) -> torch.Tensor:
    """Index of each window's nearest other window in error space, ``exclusion`` apart at least.

    ``errors [N, V]``; distances are computed in chunks of anchors, so memory stays O(chunk * N).
    """
    n = len(errors)
    norms = errors.pow(2).sum(dim=1)
    positions = torch.arange(n)
    positives = torch.empty(n, dtype=torch.long)
    for first in range(0, n, _DISTANCE_CHUNK):
        rows = positions[first : first + _DISTANCE_CHUNK]
        distances = norms[rows, None] + norms[None, :] - 2 * errors[rows] @ errors.T
        too_close = (rows[:, None] - positions[None, :]).abs() <= exclusion
        positives[rows] = distances.masked_fill(too_close, float("inf")).argmin(dim=1)
    return positives


def pretrain_encoder(cfg: TrialConfig, data: PreparedData, backbone: Pretrained
                     ) -> tuple[POGTEncoder, dict[str, Any]]:
    c = cfg.chrc.contrastive
    started = time.perf_counter()
    batcher = WindowBatcher(data)
    starts = torch.arange(0, data.segments["val"].window_starts(data.seq_len, data.horizon)[-1] + 1)
    with torch.no_grad():
        backbone.model.eval()
        errors = torch.cat([
            (batcher.targets(chunk) - backbone.model(*batcher.inputs(chunk))).flatten(1)
            for chunk in starts.split(512)
        ])
    positives = nearest_positives(errors, exclusion=data.horizon)
    rows = pogt_length(cfg.chrc, data.horizon)
    pogt = data.values.unfold(0, rows, 1)  # [T - P + 1, C, P]; window s ends at row s + L
    anchors_pogt = pogt[starts + data.seq_len - rows].transpose(1, 2)  # [N, P, C]

    with seeded(c.seed):  # the encoder has no dropout: only its initial weights are random
        encoder = build_encoder(cfg, data)
    optimiser = torch.optim.Adam(encoder.parameters(), lr=c.lr)
    order = torch.Generator().manual_seed(c.seed)
    history = []
    for epoch in range(1, c.epochs + 1):
        total, batches = 0.0, 0
        for batch in torch.randperm(len(starts), generator=order).split(c.batch_size):
            if len(batch) < 2:
                continue
            queries = encoder(anchors_pogt[batch])
            keys = encoder(anchors_pogt[positives[batch]])
            logits = queries @ keys.T / c.temperature
            loss = F.cross_entropy(logits, torch.arange(len(batch)))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total, batches = total + loss.item(), batches + 1
        history.append({"epoch": epoch, "info_nce": total / max(batches, 1)})
        log.info("contrastive encoder epoch %d: InfoNCE %.4f", epoch, history[-1]["info_nce"])
    encoder.eval()
    meta = {
        "windows": len(starts),
        "pretrain_seconds": time.perf_counter() - started,
        "history": history,
        "chance_info_nce": float(torch.log(torch.tensor(float(c.batch_size)))),
    }
    return encoder, meta


def load_or_pretrain_encoder(cfg: TrialConfig, data: PreparedData, backbone: Pretrained,
                             cache_dir: str | os.PathLike | None = None) -> PretrainedEncoder:
    key = encoder_key(cfg, backbone.key)
    directory = resolve_cache_dir(cache_dir) / "encoders" / key
    entry = load_entry(directory, "weights.pt")
    if entry is not None:
        state, meta = entry
        log.info("contrastive encoder %s: loaded from cache %s (pretrained in %.1f s)", key,
                 directory, meta["pretrain_seconds"])
        return PretrainedEncoder(key, state, meta, loaded_from_cache=True)
    log.info("contrastive encoder %s: not in cache, pretraining", key)
    encoder, meta = pretrain_encoder(cfg, data, backbone)
    meta = {"key": key, "backbone_key": backbone.key, **meta}
    save_entry(directory, {"weights.pt": encoder.state_dict()}, meta)
    log.info("contrastive encoder %s: pretrained in %.1f s", key, meta["pretrain_seconds"])
    return PretrainedEncoder(key, encoder.state_dict(), meta, loaded_from_cache=False)
