"""How much each direction's mechanism acted: measured on sampled test forecasts.

A direction whose switch is on but whose mechanism barely changes what CHRC retrieves or adds was
never really tried, and calling it "ineffective" would bury an idea on no evidence. Every
``runtime.probe_every``-th test forecast the probe measures, for the directions that are on:

| figure | direction | what it is |
|---|---|---|
| ``a1_residual_ratio`` | A1 | ``||beta * delta|| / ||CHRC correction||`` |
| ``a2_query_shift`` | A2 | ``||shift|| / ||feature||`` (before the unit norm) |
| ``a2_neighbours_changed`` | A2 | share of the top-k that differ from the unshifted query's |
| ``b1_weight_change`` | B1 bilinear | ``||W - I|| / ||I||`` (Frobenius) |
| ``b1_mlp_share`` | B1 mlp | mean ``|MLP score|`` over mean ``|cosine| + |MLP score|`` |
| ``b1_neighbours_changed`` | B1 | share of the top-k that differ from plain cosine's |
| ``b3_entropy`` | B3 | attention entropy over the visible entries / its maximum |
| ``b3_recency_corr`` | B3 | Spearman correlation of the attention weights with recency |
| ``b2_neighbours_changed`` | B2 | share of the top-k that differ from those of the control's |
|  |  | (untrained, same seed) encoder, over keys that encoder would have stored |

It reads only: no access counts, no random numbers, no parameter changes, so the numbers of a run
are the same with the probe on or off. The figures are means over the probed forecasts of the
test stream, carried in checkpoints.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from hmem.chrc.corrector import CHRC, CHRCBank
from hmem.config import TrialConfig


def _changed(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of the slots in ``a`` that are not in ``b`` (both ``[k]``)."""
    return 1.0 - float(torch.isin(a, b).float().mean())


class MechanismProbe(nn.Module):
    def __init__(self, cfg: TrialConfig, bank: CHRCBank | None, snma_on: bool) -> None:
        """Build before B2's frozen encoder replaces the bank's initial ones: those are the
        control's encoders (the same seed builds the same modules), which B2's overlap needs."""
        super().__init__()
        self.every = cfg.runtime.probe_every
        self.top_k = cfg.chrc.retrieval.top_k
        self.beta_on = snma_on and cfg.snma.beta > 0
        self.active = False  # only test forecasts are probed
        self.forecasts = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.control_encoders = None
        if cfg.uses_pretrained_encoder:
            self.control_encoders = nn.ModuleList(
                copy.deepcopy(module.encoder).requires_grad_(False) for module in bank
            )
            memory = bank[0].memory
            self.register_buffer("control_keys", torch.zeros(len(bank), *memory.keys.shape))

    def _add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def summary(self) -> dict[str, float]:
        """``{"acted/<figure>": mean}`` over the probed forecasts so far."""
        return {f"acted/{name}": self.sums[name] / self.counts[name] for name in sorted(self.sums)}

    def start_test(self) -> None:
        self.active, self.forecasts = True, 0
        self.sums.clear()
        self.counts.clear()

    def due(self) -> bool:
        """Counts a test forecast; true on every ``every``-th one."""
        if not self.active or not self.every:
            return False
        self.forecasts += 1
        return self.forecasts % self.every == 0

    @torch.no_grad()
    def on_write(self, bucket: int, slot: int | torch.Tensor, pogt: torch.Tensor) -> None:
        """B2: keep the key the control's encoder would have stored in the same slot."""
        if self.control_encoders is not None:
            self.control_keys[bucket, slot] = self.control_encoders[bucket](pogt)

    @torch.no_grad()
    def observe_correction(self, module: CHRC, bucket: int, pogt: torch.Tensor,
                           shift: torch.Tensor | None) -> None:
        """Figures of the CHRC directions for one forecast (memory as the forecast saw it)."""
        memory, k = module.memory, self.top_k
        query = module.encode(pogt, shift)
        retrieval = module.cfg.retrieval
        _, slots = memory.rank(query, k, None, module.similarity)
        if shift is not None:
            feature = module.encoder.feature(pogt)
            self._add("a2_query_shift", float(shift.norm() / feature.norm()))
            _, plain = memory.rank(module.encode(pogt), k)
            self._add("a2_neighbours_changed", _changed(slots, plain))
        if module.similarity is not None:
            _, cosine = memory.rank(query, k)
            self._add("b1_neighbours_changed", _changed(slots, cosine))
            if retrieval.similarity == "bilinear":
                eye = torch.eye(len(query), device=query.device)
                self._add("b1_weight_change", float((module.similarity.weight - eye).norm()
                                                    / eye.norm()))
            else:
                keys = memory.keys[: memory.size]
                learned = module.similarity(query, keys) - keys @ query
                cosine_part = (keys @ query).abs().mean()
                self._add("b1_mlp_share", float(learned.abs().mean()
                                                / (cosine_part + learned.abs().mean())))
        if module.attention is not None:
            from scipy.stats import spearmanr  # B3 only: SciPy would cost every trial ~1 s

            weights = module.attention.weights(query, memory)[: memory.size]
            share = weights.clamp_min(1e-30)
            entropy = -(share * share.log()).sum() / torch.log(torch.tensor(float(len(share))))
            self._add("b3_entropy", float(entropy))
            recency = memory.decay[: memory.size]  # age_decay ** age: larger is more recent
            corr = float(spearmanr(weights.cpu().numpy(), recency.cpu().numpy()).statistic)
            if corr == corr:  # NaN when the weights are all equal: no rank order to compare
                self._add("b3_recency_corr", corr)
        if self.control_encoders is not None:
            control_query = self.control_encoders[bucket](pogt)
            control = torch.addcmul(memory.empty, self.control_keys[bucket] @ control_query,
                                    memory.decay).topk(k).indices
            self._add("b2_neighbours_changed", _changed(slots, control))

    def observe_residual(self, residual: torch.Tensor, correction: torch.Tensor | None) -> None:
        """A1: the branch's addition against CHRC's correction of the same forecast."""
        if self.beta_on and correction is not None:
            self._add("a1_residual_ratio", float(residual.norm() / correction.norm()
                                                 .clamp_min(1e-12)))

    def get_extra_state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts),
                "active": self.active, "forecasts": self.forecasts}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])
        self.active, self.forecasts = bool(state["active"]), int(state["forecasts"])
