"""A1 SNMA-Light: a residual branch beside CHRC that never touches the backbone (plan 2.2).

The POGT rows are averaged and encoded (``C -> m``, LayerNorm, GELU) into ``h``; a gate mixes ``h``
with a running memory state ``s`` (``z = g * h + (1 - g) * s``, ``g = sigmoid(W [h; s])``), and
an MLP predicts a residual ``[H, C]`` from ``z``. The forecast becomes
``Y = Y_base + CHRC + beta_t * delta``, with ``beta_t`` ramping from 0 to ``beta`` over
``beta_warmup_windows`` (plan 5.6). After each forecast the state becomes ``z`` (no gradient).

Its own objective (the plan's "independent learning objective"): the branch is trained on
``MSE(stopgrad(Y_base + CHRC) + beta_t * delta, Y)``, i.e. on what CHRC leaves unexplained, while
CHRC and the backbone keep their own loss ``MSE(Y_base + CHRC, Y)``; neither can shift its errors
onto the other. An update on a window uses the memory state that its forecast used (kept for the
last ``H`` windows), as CHRC's update uses the memory as it was at forecast time.

A2: ``query_shift(h) = gamma * W h`` is added to CHRC's POGT feature before normalising, for the
queries and for the keys written to memory alike. That literal form shifts the feature by about
3 % of its norm at initialisation (``||W h||`` about 0.4 against a layer-normalised feature of
norm ``sqrt(D)``, about 11), which leaves nearly every retrieved neighbour unchanged;
``query_shift: relative`` rescales ``W h`` to ``gamma * sqrt(D)``, so ``gamma`` is the shift as a
share of the feature's norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hmem.config import SnmaConfig


class SNMALight(nn.Module):
    def __init__(self, cfg: SnmaConfig, n_vars: int, horizon: int, feature_dim: int) -> None:
        super().__init__()
        m = cfg.memory_dim
        self.cfg, self.horizon, self.n_vars = cfg, horizon, n_vars
        self.encoder = nn.Sequential(nn.Linear(n_vars, m), nn.LayerNorm(m), nn.GELU())
        self.gate = nn.Linear(2 * m, m)
        self.predictor = nn.Sequential(nn.Linear(m, 2 * m), nn.GELU(),
                                       nn.Linear(2 * m, horizon * n_vars))
        self.query_proj = nn.Linear(m, feature_dim, bias=False) if cfg.enhance_query else None
        self.feature_norm = math.sqrt(feature_dim)  # a layer-normalised feature's norm
        self.register_buffer("state", torch.zeros(m))
        self.register_buffer("history", torch.zeros(horizon, m))  # state at each recent forecast
        self.register_buffer("windows", torch.zeros((), dtype=torch.long))  # forecasts made
        self.forecasts = 0  # the same count on the host: beta_t never reads the device
        self.register_load_state_dict_post_hook(SNMALight._count_loaded)

    @staticmethod
    def _count_loaded(module: SNMALight, _keys) -> None:
        module.forecasts = int(module.windows)

    def features(self, pogt: torch.Tensor) -> torch.Tensor:
        """``[P, C]`` -> ``h [m]``."""
        return self.encoder(pogt.mean(dim=0))

    def residual(self, h: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(delta [H, C], z [m])`` from a feature and a memory state."""
        gate = torch.sigmoid(self.gate(torch.cat([h, state])))
        z = gate * h + (1 - gate) * state
        return self.predictor(z).view(self.horizon, self.n_vars), z

    def query_shift(self, h: torch.Tensor) -> torch.Tensor | None:
        if self.query_proj is None:
            return None
        shift = self.query_proj(h)
        if self.cfg.query_shift == "relative":
            shift = F.normalize(shift, dim=-1) * self.feature_norm
        return self.cfg.gamma * shift

    def beta(self) -> float:
        """``beta_t``: the ramp over ``beta_warmup_windows`` forecasts, then ``beta``."""
        if not self.cfg.beta_warmup_windows:
            return self.cfg.beta
        return self.cfg.beta * min(1.0, self.forecasts / self.cfg.beta_warmup_windows)

    def state_at_forecast(self, window: int) -> torch.Tensor:
        """The memory state the forecast of ``window`` used (zero before any was made)."""
        return self.history[window % self.horizon]

    @torch.no_grad()
    def remember(self, window: int, z: torch.Tensor) -> None:
        """After forecasting ``window``: keep the state it used, then move the state to ``z``."""
        self.history[window % self.horizon] = self.state
        self.state.copy_(z)
        self.windows += 1
        self.forecasts += 1

    def reset(self) -> None:
        """A new stream starts with an empty state, like CHRC's memory; the weights are kept."""
        self.state.zero_()
        self.history.zero_()

    def loss(self, corrected: torch.Tensor, delta: torch.Tensor, target: torch.Tensor,
             beta: float) -> torch.Tensor:
        """The branch's own objective: what ``corrected`` (held fixed) leaves unexplained."""
        return F.mse_loss(corrected.detach() + beta * delta, target)
