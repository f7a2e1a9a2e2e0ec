"""Forecasting backbones and their pretraining (the cache of pretrained ones: hmem.artefacts)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hmem.backbones.itransformer import ITransformer
from hmem.backbones.nlinear import NLinear
from hmem.config import BackboneConfig
from hmem.seeding import seeded


def build_backbone(cfg: BackboneConfig, seq_len: int, horizon: int) -> nn.Module:
    """A fresh backbone; every one maps ``(x [B, L, C], marks [B, L, M])`` to ``[B, H, C]``."""
    if cfg.kind == "itransformer":
        return ITransformer(cfg.itransformer, seq_len, horizon)
    return NLinear(seq_len, horizon)


def load_backbone(cfg: BackboneConfig, seq_len: int, horizon: int,
                  state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A backbone with stored weights, in eval mode. Its throw-away initial weights are drawn
    under a fixed seed, so loading leaves the caller's random state as it was."""
    with seeded(0):
        model = build_backbone(cfg, seq_len, horizon)
    model.load_state_dict(state)
    return model.eval()


__all__ = ["ITransformer", "NLinear", "build_backbone", "load_backbone"]
