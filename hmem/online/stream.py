"""The series as the online protocol reveals it.

At time ``clock`` the rows ``[0, clock)`` are observed and nothing else. Every read of the online
loop goes through this object, which refuses (with :class:`LeakageError`) any read of a row at or
after the clock: a forecast for window ``s`` may read rows ``< s + L``, and an update on window
``s`` may read its target only once ``s + L + H <= clock``. The check is an integer comparison,
so it stays on in every run.
"""

from __future__ import annotations

import numpy as np
import torch

from hmem.artefacts import BaseForecasts
from hmem.chrc import pogt_length
from hmem.config import ChrcConfig
from hmem.data.calendar import time_buckets
from hmem.data.splits import PreparedData
from hmem.errors import LeakageError


class RevealedSeries:
    def __init__(
        self,
        data: PreparedData,
        base: BaseForecasts | None = None,
        chrc: ChrcConfig | None = None,
    ) -> None:
        self.seq_len, self.horizon = data.seq_len, data.horizon
        self._values, self._marks = data.values, data.marks
        self._base = base
        self._pogt = pogt_length(chrc, data.horizon) if chrc is not None else 0
        # P8 bucket of every window start: the calendar of its last input row.
        if chrc is not None:
            buckets = time_buckets(data.dates, chrc.buckets.count)
            self._buckets = np.roll(buckets, -(data.seq_len - 1)).tolist()
        self.clock = 0

    @property
    def n_vars(self) -> int:
        return self._values.shape[1]

    @property
    def device(self) -> torch.device:
        return self._values.device

    def reveal_until(self, row: int) -> None:
        if row < self.clock:
            raise LeakageError(f"the clock cannot go back (from row {self.clock} to {row})")
        self.clock = row

    def _require(self, end: int, what: str) -> None:
        if end > self.clock or end < self.seq_len:
            raise LeakageError(
                f"{what} reads rows up to {end - 1}, but only rows before {self.clock} are "
                f"revealed"
            )

    def inputs(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Lookback ``[L, C]`` and its calendar ``[L, M]`` of the window at ``start``."""
        end = start + self.seq_len
        self._require(end, f"the input of window {start}")
        return self._values[start:end], self._marks[start:end]

    def pogt(self, start: int) -> torch.Tensor:
        """The last POGT rows of the window's input ``[P, C]`` (never any target row)."""
        end = start + self.seq_len
        self._require(end, f"the POGT of window {start}")
        return self._values[end - self._pogt : end]

    def base(self, start: int) -> torch.Tensor:
        """Cached frozen-backbone forecast ``[H, C]``, a function of the window's input only."""
        self._require(start + self.seq_len, f"the base forecast of window {start}")
        return self._base[start]

    def target(self, start: int) -> torch.Tensor:
        """Ground truth ``[H, C]`` of the window at ``start``."""
        end = start + self.seq_len + self.horizon
        self._require(end, f"the target of window {start}")
        return self._values[start + self.seq_len : end]

    def targets(self, starts: range) -> torch.Tensor:
        """Ground truth of consecutive windows ``[N, H, C]`` (for scoring)."""
        self._require(starts[-1] + self.seq_len + self.horizon, f"the targets of windows {starts}")
        length = self.seq_len + self.horizon
        block = self._values[starts[0] : starts[-1] + length].unfold(0, length, 1)
        return block[:, :, self.seq_len :].transpose(1, 2)

    def bucket(self, start: int) -> int:
        return self._buckets[start]
