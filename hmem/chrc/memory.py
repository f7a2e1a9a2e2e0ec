"""The error memory: a bounded store of past forecast errors keyed by POGT features.

Every operation is a handful of whole-tensor operations over fixed-size buffers (no Python loop
over entries or over the retrieved items), and none of them reads a value back to the host, so a
retrieval and a write cost the same at 10 entries as at capacity.

Semantics (reference section 3):
- retrieval: cosine similarity of the (L2-normalised) query with every key, times
  ``age_decay ** age`` where ``age`` counts the writes since the entry was written; top-k;
- eviction when full: the entry with the lowest
  ``w_imp * importance + w_rec * recency + w_acc * access`` is replaced, each term min-max
  normalised over the bank (a term that is equal everywhere contributes 0). Importance is the
  entry's mean absolute error. The reference normalised importance within each *write batch*;
  online writes are single entries, so there it was constant and eviction used recency and
  access alone. We normalise it over the bank so that its weight means something; set
  ``memory.evict_importance=0`` for the reference's behaviour.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from hmem.config import MemoryConfig

if TYPE_CHECKING:
    from hmem.chrc.similarity import Similarity


class Retrieved(NamedTuple):
    similarities: torch.Tensor  # [k], decayed, descending
    values: torch.Tensor  # [k, V]
    slots: torch.Tensor  # [k] indices into the bank


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = torch.aminmax(x)
    return (x - lo) / (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)


class ErrorMemory(nn.Module):
    def __init__(self, cfg: MemoryConfig, key_dim: int, value_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        cap = cfg.capacity
        self.register_buffer("keys", torch.zeros(cap, key_dim))
        self.register_buffer("values", torch.zeros(cap, value_dim))
        self.register_buffer("decay", torch.zeros(cap))  # age_decay ** age, kept incrementally
        self.register_buffer("written_at", torch.zeros(cap))  # write counter at write time
        self.register_buffer("access", torch.zeros(cap))  # times returned by a retrieval
        self.register_buffer("importance", torch.zeros(cap))  # mean |error|
        self.register_buffer("origin", torch.zeros(cap, dtype=torch.long))  # window start row
        # 0 for a stored entry, -inf for an empty slot: retrieval always scores the whole bank,
        # so every tensor keeps one shape from the first write to the last.
        self.register_buffer("empty", torch.full((cap,), float("-inf")))
        self.size = 0  # host-side counters: no device sync to know them
        self.writes = 0
        # origins of the latest writes, in order, while they never decrease (the online loop
        # writes windows in stream order): bounds what a retrieval may not see without a sync
        self._recent: deque[int] | None = deque(maxlen=cfg.capacity)

    @property
    def ready(self) -> bool:
        """Retrieval is on once ``min_entries`` entries exist."""
        return self.size >= self.cfg.min_entries

    def clear(self) -> None:
        for buffer in (self.keys, self.values, self.decay, self.written_at, self.access,
                       self.importance, self.origin):
            buffer.zero_()
        self.empty.fill_(float("-inf"))
        self.size = 0
        self.writes = 0
        self._recent = deque(maxlen=self.cfg.capacity)

    def visible(self, latest_origin: int) -> int:
        """How many stored entries come from windows starting at or before ``latest_origin``."""
        return int(((self.origin <= latest_origin) & (self.empty == 0)).sum())

    def sees(self, latest_origin: int, count: int) -> bool:
        """Whether at least ``count`` stored entries come from windows starting at or before
        ``latest_origin`` (``visible(latest_origin) >= count``).

        Decided on the host when it can be: the entries a retrieval may not see were written by
        the writes of later windows, so ``size`` minus their number is a lower bound of what it
        sees. Once the memory holds more than ``count`` plus a horizon of entries that bound
        settles it, and the online step reads nothing back from the device; before that (or after
        writes out of stream order) it counts on the device."""
        if self.size < count:
            return False
        if self._recent is not None:
            later = 0
            for origin in reversed(self._recent):
                if origin <= latest_origin:
                    break
                later += 1
            if self.size - later >= count:
                return True
        return self.visible(latest_origin) >= count

    def hidden(self, latest_origin: torch.Tensor | int | None = None) -> torch.Tensor:
        """``[capacity]``: 0 for an entry a retrieval may see, -inf for an empty slot and for an
        entry of a window that starts after ``latest_origin``."""
        if latest_origin is None:
            return self.empty
        return self.empty.masked_fill(self.origin > latest_origin, float("-inf"))

    def scores(
        self,
        query: torch.Tensor,
        latest_origin: torch.Tensor | int | None = None,
        similarity: Similarity | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decayed scores of the entries ``query`` may retrieve; reads only, counts nothing.

        ``(scores, None)`` over every slot (hidden and empty ones score ``-inf``), or, for a
        ``similarity`` with a ``shortlist``, ``(scores, candidates)`` over that many of the best
        cosine candidates. ``similarity`` replaces the cosine score (B1); age decay multiplies
        whichever score is used."""
        hidden = self.hidden(latest_origin)
        if similarity is None:
            return torch.addcmul(hidden, self.keys @ query, self.decay), None
        if similarity.shortlist is not None:
            cosine = torch.addcmul(hidden, self.keys @ query, self.decay)
            _, candidates = cosine.topk(min(similarity.shortlist, len(cosine)))
            scores = similarity(query, self.keys[candidates])
            return torch.addcmul(hidden[candidates], scores, self.decay[candidates]), candidates
        return torch.addcmul(hidden, similarity(query, self.keys), self.decay), None

    def rank(
        self,
        query: torch.Tensor,
        k: int,
        latest_origin: torch.Tensor | int | None = None,
        similarity: Similarity | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(top-k scores, their slots)``, descending; reads only (diagnostics use it too)."""
        scores, candidates = self.scores(query, latest_origin, similarity)
        top, picked = scores.topk(k)
        return top, picked if candidates is None else candidates[picked]

    def search(
        self,
        query: torch.Tensor,
        k: int,
        latest_origin: torch.Tensor | int | None = None,
        similarity: Similarity | None = None,
    ) -> Retrieved:
        """Top-``k`` entries for ``query``; counts an access for each. Needs ``ready``.

        ``latest_origin`` hides entries of windows that start after it (see :meth:`scores`)."""
        top, slots = self.rank(query, k, latest_origin, similarity)
        self.count_access(slots)
        return Retrieved(top, self.values[slots], slots)

    def count_access(self, slots: torch.Tensor) -> None:
        self.access.index_add_(0, slots, torch.ones(len(slots), device=slots.device))

    @torch.no_grad()
    def write(self, key: torch.Tensor, value: torch.Tensor, origin: int = 0) -> int | torch.Tensor:
        """Store one ``(key [D], value [V])`` of the window starting at row ``origin``; when full,
        evict the lowest-scoring entry. Returns the slot written."""
        n = self.size
        self.decay[:n] *= self.cfg.age_decay
        if n < self.cfg.capacity:
            slot: int | torch.Tensor = n
            self.size = n + 1
        else:
            slot = self._eviction_slot()
        self.keys[slot] = key
        self.values[slot] = value
        self.decay[slot] = 1.0
        self.empty[slot] = 0.0
        self.written_at[slot] = float(self.writes)
        self.access[slot] = 0.0
        self.importance[slot] = value.abs().mean()
        self.origin[slot] = origin
        self.writes += 1
        if self._recent is not None:
            if self._recent and origin < self._recent[-1]:
                self._recent = None  # out of order: sees() counts on the device from now on
            else:
                self._recent.append(origin)
        return slot

    def _eviction_slot(self) -> torch.Tensor:
        cfg = self.cfg
        score = torch.zeros_like(self.decay)
        for weight, term in ((cfg.evict_importance, self.importance),
                             (cfg.evict_recency, self.written_at),
                             (cfg.evict_access, self.access)):
            if weight:
                score += weight * _minmax(term)
        return score.argmin()

    # Host-side counters travel with the buffers in checkpoints.
    def get_extra_state(self) -> dict[str, object]:
        recent = None if self._recent is None else list(self._recent)
        return {"size": self.size, "writes": self.writes, "recent": recent}

    def set_extra_state(self, state: dict[str, object]) -> None:
        self.size = int(state["size"])
        self.writes = int(state["writes"])
        recent = state.get("recent")  # absent from older checkpoints: count on the device
        self._recent = None if recent is None else deque(recent, maxlen=self.cfg.capacity)
