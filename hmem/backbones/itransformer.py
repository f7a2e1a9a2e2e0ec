"""iTransformer (Liu et al., 2024): every variable's whole lookback is one token.

Calendar features of the lookback are extra tokens; full self-attention runs over all tokens and
a linear head maps each variable token to the horizon. Each variable is normalised over its own
lookback (subtract the mean, divide by the std) and the forecast is mapped back afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hmem.config import ITransformerConfig


class _EncoderLayer(nn.Module):
    """Post-norm transformer layer: attention, then a two-layer GELU feed-forward block."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ff_in = nn.Linear(d_model, d_ff)
        self.ff_out = nn.Linear(d_ff, d_model)
        self.norm_attn = nn.LayerNorm(d_model)
        self.norm_ff = nn.LayerNorm(d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        p = self.dropout if self.training else 0.0
        # [B, N, 3D] -> 3 x [B, heads, N, D/heads]
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        attended = attended.transpose(1, 2).reshape(batch, tokens, width)
        x = self.norm_attn(x + F.dropout(self.out(attended), p, self.training))
        y = F.dropout(F.gelu(self.ff_in(x)), p, self.training)
        y = F.dropout(self.ff_out(y), p, self.training)
        return self.norm_ff(x + y)


class ITransformer(nn.Module):
    def __init__(self, cfg: ITransformerConfig, seq_len: int, horizon: int) -> None:
        super().__init__()
        self.embed = nn.Linear(seq_len, cfg.d_model)
        self.layers = nn.ModuleList(
            _EncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout)
            for _ in range(cfg.e_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, horizon)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        """``x [B, L, C]``, ``marks [B, L, M]`` -> forecast ``[B, H, C]``."""
        n_vars = x.shape[-1]
        mean = x.mean(dim=1, keepdim=True)
        centred = x - mean
        std = torch.sqrt(centred.var(dim=1, keepdim=True, unbiased=False) + 1e-5)
        tokens = torch.cat([(centred / std).transpose(1, 2), marks.transpose(1, 2)], dim=1)
        h = F.dropout(self.embed(tokens), self.dropout, self.training)  # [B, C+M, D]
        for layer in self.layers:
            h = layer(h)
        y = self.head(self.norm(h))[:, :n_vars].transpose(1, 2)  # [B, H, C]
        return y * std + mean
