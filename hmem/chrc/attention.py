"""B3: attention retrieval, a soft replacement of top-k (plan section 3.4).

Multi-head attention of the query over the memory's keys gives every stored entry a weight; the
weights (averaged over heads) mix the stored errors. The age decay enters as a prior on the
weights (``+ log(age_decay ** age)`` on the logits), empty slots and entries the view may not see
get none, and ``attention_window`` optionally keeps only the most recent entries. The projections
start as the identity, so at first each head attends by its share of the cosine similarity
divided by the retrieval temperature.

Cost: the key projection is applied to the query (``keys @ (W_k^T W_q q)``), so a step costs
``O(N * D)`` for ``N`` stored entries, like the cosine scores of top-k, instead of ``O(N * D^2)``.
The gates keep their inputs: the top-k decayed cosine similarities, from the same memory.

Logit scale: the plan's literal form divides by the retrieval temperature (0.1). Keys of one
memory are close to each other (cosines within about 0.1), so content then moves a weight by a
factor of about 3 while the age prior moves it by 60: attention is a recency-weighted mean.
``attention_temperature`` sets each head's scale and ``attention_learn_scale`` learns it (as a
log, from that value), so that content can outweigh recency.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hmem.chrc.memory import ErrorMemory
from hmem.config import RetrievalConfig


class AttentionRetrieval(nn.Module):
    def __init__(self, cfg: RetrievalConfig, dim: int) -> None:
        super().__init__()
        self.heads = cfg.attention_heads
        self.window = cfg.attention_window
        temperature = cfg.attention_temperature or cfg.temperature
        self.scale = 1.0 / temperature
        self.log_scale = (
            nn.Parameter(torch.full((cfg.attention_heads,), -math.log(temperature)))
            if cfg.attention_learn_scale else None
        )
        self.query_proj = nn.Parameter(torch.eye(dim))
        self.key_proj = nn.Parameter(torch.eye(dim))

    def weights(self, query: torch.Tensor, memory: ErrorMemory,
                latest_origin: torch.Tensor | int | None = None) -> torch.Tensor:
        """Attention weight of every slot ``[capacity]`` (zero for slots it may not see)."""
        dim = query.shape[-1]
        per_head = (self.query_proj @ query).view(self.heads, dim // self.heads)  # [h, D/h]
        # head h scores key k by (W_q q)_h . (W_k k)_h = k . (W_k[h rows]^T (W_q q)_h)
        probes = torch.einsum("hd,hde->he", per_head,
                              self.key_proj.view(self.heads, dim // self.heads, dim))  # [h, D]
        scale = self.scale if self.log_scale is None else self.log_scale.exp()
        logits = (memory.keys @ probes.T) * scale  # [capacity, h]
        prior = memory.decay.clamp_min(1e-30).log() + memory.hidden(latest_origin)
        if self.window is not None and memory.writes > self.window:
            prior = prior.masked_fill(memory.written_at < memory.writes - self.window,
                                      float("-inf"))
        return torch.softmax(logits + prior[:, None], dim=0).mean(dim=1)

    def forward(self, query: torch.Tensor, memory: ErrorMemory, k: int,
                latest_origin: torch.Tensor | int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(aggregate [V], top-k decayed cosine similarities [k])`` for the gates."""
        weights = self.weights(query, memory, latest_origin)
        aggregate = weights @ memory.values
        cosine = torch.addcmul(memory.hidden(latest_origin), memory.keys @ query, memory.decay)
        top, _ = cosine.topk(k)
        _, most_used = weights.detach().topk(k)
        memory.access.index_add_(0, most_used, torch.ones(k, device=weights.device))
        return aggregate, top

