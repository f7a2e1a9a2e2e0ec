"""NLinear (Zeng et al., 2023): one linear map from lookback to horizon, shared by all variables,
applied to the series minus its last value. Fast enough for tests and demos."""

from __future__ import annotations

import torch
from torch import nn


class NLinear(nn.Module):
    def __init__(self, seq_len: int, horizon: int) -> None:
        super().__init__()
        self.linear = nn.Linear(seq_len, horizon)

    def forward(self, x: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        """``x [B, L, C]`` -> ``[B, H, C]``; calendar marks are not used."""
        last = x[:, -1:, :]
        return self.linear((x - last).transpose(1, 2)).transpose(1, 2) + last
