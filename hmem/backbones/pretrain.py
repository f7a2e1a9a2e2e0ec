"""Offline training of a backbone on the train split, early-stopped on validation MSE.

Adam at ``pretrain.lr`` for ``constant_lr_epochs`` epochs, then multiplied by ``lr_decay`` every
epoch (the reference's "type3" schedule); the weights of the best validation epoch are kept.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from hmem.backbones import build_backbone
from hmem.config import TrialConfig
from hmem.data.splits import PreparedData
from hmem.data.windows import WindowBatcher
from hmem.errors import NumericalError
from hmem.seeding import seeded

log = logging.getLogger(__name__)

_EVAL_BATCH = 256


@dataclass
class PretrainReport:
    seconds: float
    epochs_run: int
    best_epoch: int
    best_val_mse: float
    history: list[dict[str, float]] = field(default_factory=list)


def epoch_lr(cfg: TrialConfig, epoch: int) -> float:
    """Learning rate of 1-based ``epoch``."""
    extra = max(0, epoch - cfg.pretrain.constant_lr_epochs)
    return cfg.pretrain.lr * cfg.pretrain.lr_decay**extra


@torch.no_grad()
def evaluate_mse(model: nn.Module, batcher: WindowBatcher, starts: torch.Tensor) -> float:
    model.eval()
    total, count = 0.0, 0
    for chunk in starts.split(_EVAL_BATCH):
        x, marks = batcher.inputs(chunk)
        err = model(x, marks) - batcher.targets(chunk)
        total += float(err.pow(2).sum())
        count += err.numel()
    return total / count


def pretrain_backbone(cfg: TrialConfig, data: PreparedData) -> tuple[nn.Module, PretrainReport]:
    """Train on the train split; keep the weights of the epoch with the best validation MSE.
    Initial weights and dropout draw from ``pretrain.seed`` (the caller's random state is kept)."""
    with seeded(cfg.pretrain.seed):
        return _pretrain(cfg, data)


def _pretrain(cfg: TrialConfig, data: PreparedData) -> tuple[nn.Module, PretrainReport]:
    p = cfg.pretrain
    model = build_backbone(cfg.backbone, data.seq_len, data.horizon)
    optimiser = torch.optim.Adam(model.parameters(), lr=p.lr)
    batcher = WindowBatcher(data)
    train = torch.tensor(data.segments["train"].window_starts(data.seq_len, data.horizon))
    val = torch.tensor(data.segments["val"].window_starts(data.seq_len, data.horizon))
    order = torch.Generator().manual_seed(p.seed)

    started = time.perf_counter()
    best_state, best_mse, best_epoch, stale = None, float("inf"), 0, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, p.epochs + 1):
        for group in optimiser.param_groups:
            group["lr"] = epoch_lr(cfg, epoch)
        model.train()
        train_sum, batches = 0.0, 0
        for chunk in train[torch.randperm(len(train), generator=order)].split(p.batch_size):
            x, marks = batcher.inputs(chunk)
            loss = F.mse_loss(model(x, marks), batcher.targets(chunk))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            train_sum += loss.item()
            batches += 1
        train_mse = train_sum / batches
        val_mse = evaluate_mse(model, batcher, val)
        if not (torch.isfinite(torch.tensor(val_mse)) and torch.isfinite(torch.tensor(train_mse))):
            raise NumericalError(
                f"pretraining diverged in epoch {epoch} (train MSE {train_mse}, validation MSE "
                f"{val_mse}); lower pretrain.lr (now {p.lr})"
            )
        history.append({"epoch": epoch, "lr": epoch_lr(cfg, epoch), "train_mse": train_mse,
                        "val_mse": val_mse})
        log.info("pretrain epoch %d: train MSE %.4f, validation MSE %.4f", epoch, train_mse,
                 val_mse)
        if val_mse < best_mse:
            best_state, best_mse, best_epoch = copy.deepcopy(model.state_dict()), val_mse, epoch
            stale = 0
        else:
            stale += 1
            if stale >= p.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    report = PretrainReport(
        seconds=time.perf_counter() - started,
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_val_mse=best_mse,
        history=history,
    )
    return model, report
