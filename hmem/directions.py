"""The plan's directions and backbone regimes, defined once.

Everything that groups, orders or pairs trials (result loading, the rules, the figures, the
campaign) asks these two types instead of spelling labels, stages or regimes again.

- :class:`Direction`: which idea of the plan a trial tests, read off its config's switches
  (:meth:`Direction.of`), with the stage (plan 5.2), family (A: SNMA, B: retrieval) and the
  order in which plan 5.2 runs them (A1, A2, then B1, B3, B2: B2's pretraining comes last).
- :class:`BackboneRegime`: whether the backbone stays frozen online, and at which learning rate it
  learns otherwise. A variant is only ever compared with a control of the same regime.

Both are plain values (a ``StrEnum`` member equals its label, a regime is two typed fields), so
``metrics.json`` and the trials table keep carrying them as strings, booleans and floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hmem.config import TrialConfig


class Direction(StrEnum):
    """Members in the order plan 5.2 runs them; ``BASELINE`` (CHRC off) is not judged."""

    BASELINE = "baseline"
    CONTROL = "control"
    A1 = "A1"
    A2 = "A2"
    B1 = "B1"
    B3 = "B3"
    B2 = "B2"
    S3 = "S3"

    @property
    def stage(self) -> str:
        """Plan 5.2's stage: S0 (control, baselines), S1 (A), S2 (B), S3 (combinations)."""
        if self is Direction.S3:
            return "S3"
        return {"A": "S1", "B": "S2"}.get(self.family or "", "S0")

    @property
    def family(self) -> str | None:
        """``A`` (SNMA: A1, A2), ``B`` (retrieval: B1, B2, B3), or None."""
        return self.value[0] if self.value[:1] in ("A", "B") else None

    @property
    def order(self) -> int:
        """Position in plan 5.2's sequence (sorting key of tables and the campaign)."""
        return list(Direction).index(self)

    @property
    def judged(self) -> bool:
        """Whether the rules give it a verdict (every direction but the CHRC-free baseline)."""
        return self is not Direction.BASELINE

    @classmethod
    def in_family(cls, family: str) -> tuple[Direction, ...]:
        return tuple(d for d in cls if d.family == family)

    @classmethod
    def of(cls, cfg: TrialConfig) -> Direction:
        """Read off the switches, never declared, so a label cannot disagree with what ran.

        CHRC off is the baseline; CHRC with nothing switched on the control; SNMA is A1 (A2 with
        the enhanced query); a learned similarity B1, the contrastive encoder B2, attention
        retrieval B3. Any combination of two (an A with a B, or two Bs) is S3.
        """
        if not cfg.chrc.enabled:
            return cls.BASELINE
        retrieval = cfg.chrc.retrieval
        switched = [d for d, on in ((cls.A2 if cfg.snma.enhance_query else cls.A1,
                                     cfg.snma.enabled),
                                    (cls.B1, retrieval.similarity != "cosine"),
                                    (cls.B2, cfg.chrc.contrastive.enabled),
                                    (cls.B3, retrieval.mode == "attention")) if on]
        if len(switched) > 1:
            return cls.S3
        return switched[0] if switched else cls.CONTROL


@dataclass(frozen=True)
class BackboneRegime:
    """How the backbone behaves online: frozen, or learning at ``online_lr`` (the online
    learning rate times ``backbone.online_lr_scale``). Runs pair only within one regime."""

    frozen: bool
    online_lr: float

    @classmethod
    def of(cls, cfg: TrialConfig) -> BackboneRegime:
        return cls(cfg.backbone.frozen_online, cfg.online.lr * cfg.backbone.online_lr_scale)

    @property
    def label(self) -> str:
        """``backbone=frozen`` or ``backbone=online@1e-06``, for tables and logs only."""
        if self.frozen:
            return "backbone=frozen"
        return f"backbone=online@{self.online_lr:g}"

    @classmethod
    def label_of(cls, frozen: object, online_lr: object) -> str | None:
        """The label from a trials table's typed columns (None when they are missing)."""
        if not isinstance(online_lr, (int, float)) or math.isnan(online_lr):
            return None
        return cls(bool(frozen), float(online_lr)).label
