"""Forecasting backbones, their pretraining and the cache of pretrained artefacts."""

from __future__ import annotations

from torch import nn

from hmem.backbones.itransformer import ITransformer
from hmem.backbones.nlinear import NLinear
from hmem.config import BackboneConfig


def build_backbone(cfg: BackboneConfig, seq_len: int, horizon: int) -> nn.Module:
    """A fresh backbone; every one maps ``(x [B, L, C], marks [B, L, M])`` to ``[B, H, C]``."""
    if cfg.kind == "itransformer":
        return ITransformer(cfg.itransformer, seq_len, horizon)
    return NLinear(seq_len, horizon)


__all__ = ["ITransformer", "NLinear", "build_backbone"]
