"""The files that cross package boundaries, each defined once with a schema version.

- :class:`TrialMetrics` is a trial's ``metrics.json``: written by :func:`hmem.trial.write_results`
  (``hmem run`` and the Ray trainable), read by :mod:`analysis.loading`.
- :class:`LaunchRecord` is an experiment's ``hmem_launch.json``: the search space and options as
  launched, written by :mod:`tune.launcher` (and read back by ``--resume``), read by the analysis
  to know a grid's declared order and the trials that never started.

Writer and reader share the model, so a field renamed on one side fails loudly on the other. A
file carries ``schema_version``; files written before it existed read as version 0 (the same
fields, plus ``test_windows``, which ``steps`` already said). A file from a newer version is
refused with a sentence saying so, rather than misread.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hmem.config import format_validation_error
from hmem.directions import Direction
from hmem.errors import HmemError

METRICS_FILE = "metrics.json"
LAUNCH_RECORD = "hmem_launch.json"
ACTED_PREFIX = "acted/"  # the probe's figures keep their TensorBoard names in the file


class RecordError(HmemError):
    """A results file is not what this version of hmem-tune writes."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    SCHEMA_VERSION: ClassVar[int] = 0  # overridden per record type
    schema_version: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _known_version(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {"schema_version": 0, **data}
            version = data["schema_version"]
            if isinstance(version, int) and version > cls.SCHEMA_VERSION:
                raise ValueError(f"schema_version {version} comes from a newer hmem-tune (this "
                                 f"one reads up to {cls.SCHEMA_VERSION}): upgrade to read it")
        return data

    @classmethod
    def new(cls, fields: dict[str, Any]):
        """A record of this version, to write (a file without a version reads as version 0)."""
        return cls.model_validate({**fields, "schema_version": cls.SCHEMA_VERSION})

    @classmethod
    def read(cls, text: str, source: str):
        """Parse a file's text; ``source`` names it in the error."""
        try:
            return cls.model_validate(json.loads(text))
        except json.JSONDecodeError as err:
            raise RecordError(f"{source}: not valid JSON ({err})") from None
        except ValidationError as err:
            raise RecordError(format_validation_error(err, source)) from None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2)  # NaN stays NaN, as json.loads reads it


class StoppedEarly(BaseModel):
    """Where futility stopping (:mod:`analysis.futility`) ended a trial, and why: after
    ``window`` of ``of`` test windows its gain over the control was ``gain`` and the upper
    bound of its whole-stream gain ``bound`` (at one-sided ``level``, look ``look``)."""

    model_config = ConfigDict(extra="forbid")

    window: int
    of: int
    gain: float
    bound: float
    level: float
    look: int


class TrialMetrics(_Record):
    """``metrics.json``: a trial's scores and timings (from the online run), its identity and
    regime (:func:`hmem.trial.describe`), and where it ran."""

    SCHEMA_VERSION: ClassVar[int] = 1
    schema_version: int = Field(SCHEMA_VERSION, ge=0)

    # scores and timings of the online run
    mse: float
    mae: float
    rmse: float
    steps: int
    warmup_steps: int
    warmup_mse: float | None
    seconds_online: float
    seconds_warmup: float
    seconds_total: float
    ms_per_step: float
    mean_gate: float | None
    corrected_fraction: float
    memory_entries: list[int]
    trainable_parameters: int
    compiled: bool | None = Field(None, description="whether the hot path ran compiled")
    device_memory_mb: float | None = Field(
        None, description="peak GPU memory of the trial's process (None on the CPU)")
    acted: dict[str, float] = Field(
        default_factory=dict, description="the mechanism probe's figures, 'acted/...' in the file")
    # identity and regime
    space: str
    variant: str
    dataset: str
    seed: int
    regime: str
    direction: Direction
    backbone_frozen: bool
    backbone_online_lr: float
    chrc: bool
    backbone_key: str
    pretrain_cached: bool
    pretrain_seconds: float
    pretrain_best_val_mse: float
    pretrain_epochs: int
    device: str
    threads: int
    encoder_key: str | None
    encoder_pretrain_seconds: float | None
    # where it ran (a search's trials only)
    backbone_source: str | None = None
    node: str | None = None
    # a trial ended by futility stopping: its scores cover the windows it ran only
    stopped_early: StoppedEarly | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_file_layout(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        acted = {k: v for k, v in data.items() if k.startswith(ACTED_PREFIX)}
        for name in acted:
            del data[name]
        data.setdefault("acted", acted)
        if data.get("schema_version", 0) == 0:
            data.pop("test_windows", None)
        return data

    def to_json(self) -> str:
        tree = self.model_dump(exclude={"acted"})
        tree.update(self.acted)
        return json.dumps(tree, indent=2)


class LaunchRecord(_Record):
    """``hmem_launch.json``: what ``hmem tune launch`` was asked to run."""

    SCHEMA_VERSION: ClassVar[int] = 1
    schema_version: int = Field(SCHEMA_VERSION, ge=0)

    space: dict[str, Any] = Field(description="the search space as launched (validated)")
    space_source: str
    data_dir: str | None
    overrides: dict[str, Any] = Field(default_factory=dict, description="--set overrides")
