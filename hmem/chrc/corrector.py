"""CHRC, the cross-horizon retrieval corrector, and its P8 bank of time buckets.

    Y_corrected = Y_base + a * w(h) * correction

``correction`` is a refined aggregate of the errors stored for the POGT windows most similar to
the current one; ``a = confidence * quality * a_sim`` (P2 supplies ``a_sim``), ``w(h)`` is the
P7 horizon mask. A switch that is off builds nothing: no P2 term, no mask buffer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from hmem.chrc.attention import AttentionRetrieval
from hmem.chrc.encoder import POGTEncoder
from hmem.chrc.memory import ErrorMemory
from hmem.chrc.similarity import Similarity
from hmem.config import ChrcConfig, HorizonMaskConfig, SoftGateConfig


def pogt_length(cfg: ChrcConfig, horizon: int) -> int:
    """Rows of partially observed ground truth: the last ``round(H * pogt_ratio)`` input rows."""
    return max(1, round(horizon * cfg.pogt_ratio))


def horizon_weights(cfg: HorizonMaskConfig, horizon: int) -> torch.Tensor | None:
    """P7 weights ``w(h)``, h = 0 .. H-1, or ``None`` when the mask is off."""
    h = torch.arange(horizon, dtype=torch.float32)
    if cfg.mode == "off":
        return None
    if cfg.mode == "exp":
        return torch.clamp(cfg.decay**h, min=cfg.floor)
    return 1.0 - (1.0 - cfg.floor) * h / max(horizon - 1, 1)


def soft_gate(cfg: SoftGateConfig, max_similarity: torch.Tensor) -> torch.Tensor:
    """P2: ``sigmoid(steepness * (max_similarity - threshold))``."""
    return torch.sigmoid(cfg.steepness * (max_similarity - cfg.threshold))


class Correction(NamedTuple):
    delta: torch.Tensor  # [H, C], to add to the base forecast
    gate: torch.Tensor  # scalar: the applied factor a (before the horizon mask)


def _mlp(n_in: int, hidden: int, n_out: int, zero_last: bool = False) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))
    if zero_last:  # starts as the identity of whatever it is added to
        nn.init.zeros_(net[2].weight)
        nn.init.zeros_(net[2].bias)
    return net


class CHRC(nn.Module):
    """One CHRC module: its own encoder, memory, refiner and gates."""

    def __init__(self, cfg: ChrcConfig, n_vars: int, horizon: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.horizon, self.n_vars = horizon, n_vars
        value_dim = horizon * n_vars
        k, d = cfg.retrieval.top_k, cfg.feature_dim
        self.encoder = POGTEncoder(n_vars, pogt_length(cfg, horizon), cfg.hidden_dim, d)
        self.memory = ErrorMemory(cfg.memory, d, value_dim)
        self.refiner = _mlp(value_dim + d, cfg.refiner_dim, value_dim, zero_last=True)
        # B1 / B3: a mechanism that is off is not built
        self.similarity = (
            Similarity(cfg.retrieval, d) if cfg.retrieval.similarity != "cosine" else None
        )
        self.attention = (
            AttentionRetrieval(cfg.retrieval, d) if cfg.retrieval.mode == "attention" else None
        )
        self.quality = _mlp(k + d, cfg.gate_dim, 1)
        self.confidence = _mlp(d + 4, cfg.gate_dim, 1)
        weights = horizon_weights(cfg.horizon_mask, horizon)
        self.register_buffer("mask", None if weights is None else weights[:, None])

    def encode(self, pogt: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """``[..., P, C]`` POGT rows -> unit-norm query / key ``[..., D]``."""
        return self.encoder(pogt, shift)

    def aggregate(self, similarities: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
        """Weighted mean of the retrieved errors ``[k, V] -> [V]``."""
        if self.cfg.retrieval.aggregation == "softmax":
            weights = torch.softmax(similarities / self.cfg.retrieval.temperature, dim=0)
        else:
            weights = similarities.clamp_min(0)
            weights = weights / weights.sum().clamp_min(1e-8)
        return weights @ errors

    def correct(
        self,
        query: torch.Tensor,
        base: torch.Tensor,
        latest_origin: torch.Tensor | int | None = None,
    ) -> Correction:
        """Correction for one window; ``query [D]``, ``base [H, C]``. Needs ``memory.ready``.

        ``latest_origin`` restricts retrieval to entries of windows starting at or before it."""
        k = self.cfg.retrieval.top_k
        if self.cfg.retrieval.soft:  # B1's soft retrieval: weights over the whole shortlist
            scores, candidates = self.memory.scores(query, latest_origin, self.similarity)
            raw = self.aggregate(scores, self.memory.values[candidates])
            sims, picked = scores.topk(k)
            self.memory.count_access(candidates[picked])
        elif self.attention is None:
            found = self.memory.search(query, k, latest_origin, self.similarity)
            raw, sims = self.aggregate(found.similarities, found.values), found.similarities
        else:
            raw, sims = self.attention(query, self.memory, k, latest_origin)  # [V], [k]
        quality = torch.sigmoid(self.quality(torch.cat([sims, query])))  # [1]
        refined = self.refiner(torch.cat([raw, query]))  # residual of raw, [V]
        correction = raw + quality * refined  # = quality * (raw + refined) + (1 - quality) * raw
        stats = torch.stack([base.abs().mean(), base.std(), correction.abs().mean(),
                             correction.std()])
        gate = quality * torch.sigmoid(self.confidence(torch.cat([query, stats])))
        if self.cfg.soft_gate.enabled:
            gate = gate * soft_gate(self.cfg.soft_gate, sims[0])
        delta = correction.view(self.horizon, self.n_vars)
        if self.mask is not None:
            delta = delta * self.mask
        return Correction(gate * delta, gate.squeeze(0))


def corrected_forecast(
    module: CHRC,
    pogt: torch.Tensor,
    base: torch.Tensor,
    latest_origin: torch.Tensor | None = None,
    query_shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``base`` plus ``module``'s correction: ``(forecast [H, C], query [D], gate)``.

    A plain function of tensors (``latest_origin`` too), so ``torch.compile`` traces one graph
    that every bucket's module shares. ``query_shift`` is A2's addition to the query feature.
    """
    query = module.encode(pogt, query_shift)
    correction = module.correct(query, base, latest_origin)
    return base + correction.delta, query, correction.gate


class CHRCBank(nn.Module):
    """P8: one independent CHRC module per time bucket (a single one when P8 is off)."""

    def __init__(self, cfg: ChrcConfig, n_vars: int, horizon: int) -> None:
        super().__init__()
        self.modules_by_bucket = nn.ModuleList(
            CHRC(cfg, n_vars, horizon) for _ in range(cfg.buckets.count)
        )

    def __getitem__(self, bucket: int) -> CHRC:
        return self.modules_by_bucket[bucket]

    def __len__(self) -> int:
        return len(self.modules_by_bucket)

    def load_frozen_encoder(self, state: dict[str, torch.Tensor]) -> None:
        """B2: every bucket's encoder becomes the pretrained one, and stops learning."""
        for module in self.modules_by_bucket:
            module.encoder.load_state_dict(state)
            module.encoder.requires_grad_(False)

    def clear_memories(self) -> None:
        for module in self.modules_by_bucket:
            module.memory.clear()
