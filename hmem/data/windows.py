"""Batched access to many windows at once (pretraining and the base-forecast cache).

The online loop reads one window at a time through :class:`hmem.online.stream.RevealedSeries`
instead, which enforces what the protocol has revealed.
"""

from __future__ import annotations

import torch

from hmem.data.splits import PreparedData


class WindowBatcher:
    """Gathers ``(x [B, L, C], marks [B, L, M], y [B, H, C])`` for arbitrary window starts."""

    def __init__(self, data: PreparedData) -> None:
        length = data.seq_len + data.horizon
        self.seq_len = data.seq_len
        self._values = data.values.unfold(0, length, 1)  # [T - L - H + 1, C, L + H] (a view)
        self._marks = data.marks.unfold(0, data.seq_len, 1)  # [T - L + 1, M, L]

    def inputs(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._values[starts, :, : self.seq_len].transpose(1, 2)
        return x, self._marks[starts].transpose(1, 2)

    def targets(self, starts: torch.Tensor) -> torch.Tensor:
        return self._values[starts, :, self.seq_len :].transpose(1, 2)
