"""B1: how a query scores the memory's keys (plan section 3.2).

- ``cosine``: ``q . k`` on unit vectors (the control);
- ``bilinear``: ``q^T W k`` with ``W`` initialised to the identity, so it starts as the cosine;
- ``mlp``: ``cos(q, k) + MLP([q; k; q - k; q * k])`` with the MLP's last layer initialised to
  zero (it starts as the cosine too). It scores only a cosine shortlist of ``shortlist`` entries,
  which bounds its cost per step whatever the memory's size.

Top-k selection is not differentiable: with hard top-k the learned parts receive their gradient
only through the softmax weights of the ``k`` entries that were retrieved (and P2's maximum
similarity), so at online learning rates they barely move from the cosine. ``retrieval.soft``
is the plan's fallback (5.6): the softmax weights cover the whole cosine shortlist, and every
candidate passes its gradient to the learned score.
"""

from __future__ import annotations

import torch
from torch import nn

from hmem.config import RetrievalConfig


class Similarity(nn.Module):
    def __init__(self, cfg: RetrievalConfig, dim: int) -> None:
        super().__init__()
        self.kind = cfg.similarity
        self.shortlist = cfg.shortlist if cfg.similarity == "mlp" or cfg.soft else None
        if self.kind == "bilinear":
            self.weight = nn.Parameter(torch.eye(dim))
        elif self.kind == "mlp":
            self.net = nn.Sequential(nn.Linear(4 * dim, dim), nn.GELU(), nn.Linear(dim, 1))
            nn.init.zeros_(self.net[2].weight)
            nn.init.zeros_(self.net[2].bias)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Raw scores (before age decay) of ``query [D]`` against ``keys [N, D]``: ``[N]``."""
        if self.kind == "cosine":
            return keys @ query
        if self.kind == "bilinear":
            return keys @ (self.weight.T @ query)  # q^T W k for every k, in one product
        q = query.expand_as(keys)
        pairs = torch.cat([q, keys, q - keys, q * keys], dim=-1)  # [N, 4D]
        return keys @ query + self.net(pairs).squeeze(-1)
