"""The POGT encoder: the last observed rows of a window -> a unit-norm retrieval feature.

A per-row MLP (``C -> hidden``, LayerNorm, GELU, ``hidden -> hidden``, GELU) with a learned
position embedding, mean-pooled over rows, then ``hidden -> D`` and LayerNorm. The position
embedding joins after the first linear layer, before the nonlinearity: added after the MLP, as a
literal reading of the reference has it, mean pooling would turn it into a constant bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class POGTEncoder(nn.Module):
    def __init__(self, n_vars: int, rows: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.rows_in = nn.Linear(n_vars, hidden)
        self.position = nn.Parameter(torch.randn(rows, hidden) * 0.02)
        self.norm_rows = nn.LayerNorm(hidden)
        self.rows_mid = nn.Linear(hidden, hidden)
        self.project = nn.Linear(hidden, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def feature(self, pogt: torch.Tensor) -> torch.Tensor:
        """``[..., P, C]`` -> the layer-normalised feature ``[..., D]``, before the unit norm."""
        h = F.gelu(self.norm_rows(self.rows_in(pogt) + self.position))
        h = F.gelu(self.rows_mid(h)).mean(dim=-2)
        return self.norm_out(self.project(h))

    def forward(self, pogt: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """``[..., P, C]`` -> ``[..., D]`` with unit L2 norm.

        ``shift`` is added to the feature before normalising (A2's query enhancement)."""
        feature = self.feature(pogt)
        if shift is not None:
            feature = feature + shift
        return F.normalize(feature, dim=-1)
