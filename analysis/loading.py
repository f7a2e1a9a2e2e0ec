"""Experiment folders -> one tidy DataFrame, one row per trial.

Ray's own loader (:class:`ray.tune.ExperimentAnalysis`) says which trials exist and how they
ended; each finished trial's folder adds what ``hmem run`` wrote (``metrics.json``,
``config.json``, ``curve.csv``). A trial that errored, is still pending or running, or has no
finite MSE keeps its row with its ``status`` and the reason in ``note``, and ``valid`` False:
the rules never count it as a result.

Storage may be a local folder or a URI Ray Tune understands (``s3://...``); files are read
through pyarrow's filesystems, as Ray writes them.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs

from hmem.config import TrialConfig
from hmem.directions import BackboneRegime, Direction
from hmem.errors import HmemError
from hmem.records import LAUNCH_RECORD, METRICS_FILE, LaunchRecord, RecordError, TrialMetrics
from hmem.spaces import Cell, SearchSpace


class AnalysisError(HmemError):
    """An experiment folder cannot be read, or the results cannot be judged as asked."""


def _filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    uri = location if "://" in location else str(Path(location).expanduser().resolve())
    return pyarrow.fs.FileSystem.from_uri(uri)


def _read_text(fs: pyarrow.fs.FileSystem, path: str) -> str | None:
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as handle:
        return handle.read().decode()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"chrc": {"memory": {"capacity": 1000}}}`` -> ``{"chrc.memory.capacity": 1000}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else value
    return flat


def _space_of(record: LaunchRecord | None) -> SearchSpace | None:
    if record is None:
        return None
    space = SearchSpace.model_validate(record.space)
    space._source = record.space_source
    return space


def read_launch_record(location: str) -> LaunchRecord | None:
    """An experiment's ``hmem_launch.json`` (None for one launched without hmem)."""
    fs, root = _filesystem(location)
    raw = _read_text(fs, f"{root}/{LAUNCH_RECORD}")
    try:
        return LaunchRecord.read(raw, f"{location}/{LAUNCH_RECORD}") if raw else None
    except RecordError as err:
        raise AnalysisError(str(err)) from None


def _experiment(location: str, index: int) -> list[dict[str, Any]]:
    from tune.ray_api import load_experiment  # Ray is only needed when reading experiments

    fs, root = _filesystem(location)
    if fs.get_file_info(root).type != pyarrow.fs.FileType.Directory:
        raise AnalysisError(f"{location}: no such experiment folder")
    try:
        analysis = load_experiment(location if "://" in location else root)
    except Exception as err:  # Ray raises ValueError / FileNotFoundError / its own TuneError
        raise AnalysisError(f"{location}: not a Ray Tune experiment folder ({err})") from None
    record = read_launch_record(location)
    space = _space_of(record)
    overrides = record.overrides if record else {}
    where = {"name": Path(root).name, "location": location, "index": index,
             "order": list(space.variants) if space else []}

    rows = []
    for trial in analysis.trials:
        cell = Cell(**trial.config["cell"])
        trial_root = trial.path  # a path inside the experiment's filesystem
        metrics_text = _read_text(fs, f"{trial_root}/{METRICS_FILE}")
        config_text = _read_text(fs, f"{trial_root}/config.json")
        metrics, unreadable = None, ""
        if metrics_text:
            try:
                metrics = TrialMetrics.read(metrics_text, f"{trial_root}/{METRICS_FILE}")
            except RecordError as err:  # the trial keeps its row, invalid, with the reason
                unreadable = str(err)
        if config_text:
            cfg = TrialConfig.model_validate(json.loads(config_text))
        elif space is not None:
            cfg = space.trial_config(cell.variant, cell.dataset, cell.seed, overrides)
        else:
            cfg = None
        status = trial.status
        mse = metrics.mse if metrics else math.nan
        note = ""
        if status in ("PENDING", "RUNNING"):
            # Ray saves a running trial as PENDING, so the state file cannot tell them apart.
            note = "not finished (pending or running)"
        elif status != "TERMINATED":
            note = f"trial {status.lower()}" + _error_line(fs, trial_root)
        elif unreadable:
            note = unreadable
        elif cfg is not None and not cfg.online.test_stream:
            note = "validation only (online.test_stream: false): a tuning trial, no test score"
        elif cfg is not None and cfg.online.test_share < 1:
            note = (f"selection only (online.test_share: {cfg.online.test_share:g}): the first "
                    "part of the test stream, to choose on, not a result")
        elif metrics is None:
            note = f"no {METRICS_FILE} (stopped early or not synced)"
        elif not math.isfinite(mse):
            note = f"non-finite mse ({mse})"
        row = _row(where, cell, cfg, metrics, status, note, trial.trial_id, trial_root)
        # what a search algorithm (Optuna) sampled for this trial, one column per parameter
        row.update({f"sampled.{key}": value
                    for key, value in (trial.config.get("sampled") or {}).items()})
        # Ray's own clock: the time of a trial a scheduler cut before it wrote metrics.json
        row["ray_time_s"] = _number((trial.last_result or {}).get("time_total_s"))
        rows.append(row)
    if space is not None and space.search.kind == "grid":
        # Ray creates a grid's trials as it goes: an interrupted search has not created them all.
        seen = {(row["variant"], row["dataset"], row["seed"]) for row in rows}
        for cell in space.cells():
            if (cell.variant, cell.dataset, cell.seed) not in seen:
                cfg = space.trial_config(cell.variant, cell.dataset, cell.seed, overrides)
                rows.append(_row(where, cell, cfg, None, "NOT_STARTED", "not started", None, None))
    return rows


def _error_line(fs: pyarrow.fs.FileSystem, trial_root: str) -> str:
    """``: <the exception's last line>`` from the error.txt Ray keeps in the trial folder."""
    text = _read_text(fs, f"{trial_root}/error.txt")
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return f": {lines[-1].strip()} ({trial_root}/error.txt)" if lines else ""


def _row(where: dict[str, Any], cell: Cell, cfg: TrialConfig | None,
         metrics: TrialMetrics | None, status: str, note: str, trial_id: str | None,
         trial_path: str | None) -> dict[str, Any]:
    order = where["order"]
    direction = cfg.direction if cfg is not None else (metrics.direction if metrics else None)
    regime = cfg.backbone_regime if cfg is not None else (
        BackboneRegime(metrics.backbone_frozen, metrics.backbone_online_lr) if metrics else None)
    row = {
        "experiment": where["name"],
        "experiment_path": where["location"],
        "experiment_index": where["index"],
        "variant_order": order.index(cell.variant) if cell.variant in order else len(order),
        "stage": direction.stage if direction else "?",
        "direction": direction.value if direction else "unknown",
        "direction_order": direction.order if direction else len(Direction),
        "variant": cell.variant,
        "dataset": cell.dataset,
        "seed": cell.seed,
        "regime": metrics.regime if metrics else (cfg.regime if cfg else None),
        "backbone_frozen": regime.frozen if regime else None,
        "backbone_online_lr": regime.online_lr if regime else math.nan,
        "backbone_regime": regime.label if regime else None,
        "backbone_key": metrics.backbone_key if metrics else None,
        "status": status,
        "valid": not note,
        # streamed only what a choice needs (the warm-up, or the first share of the test)
        "selection_only": cfg is not None and (not cfg.online.test_stream
                                               or cfg.online.test_share < 1),
        "note": note,
        "mse": metrics.mse if metrics else math.nan,
        "mae": metrics.mae if metrics else math.nan,
        "rmse": metrics.rmse if metrics else math.nan,
        "steps": metrics.steps if metrics else math.nan,
        "ms_per_step": metrics.ms_per_step if metrics else math.nan,
        "device_memory_mb": _number(metrics.device_memory_mb) if metrics else math.nan,
        "wall_s": metrics.seconds_total if metrics else math.nan,
        "warmup_mse": _number(metrics.warmup_mse) if metrics else math.nan,
        "warmup_steps": metrics.warmup_steps if metrics else math.nan,
        **_stopped(metrics),
        **({name: _number(value) for name, value in metrics.acted.items()} if metrics else {}),
        "trial_id": trial_id,
        "trial_path": trial_path,
    }
    if cfg is not None:
        row.update({f"cfg.{k}": v for k, v in flatten(cfg.model_dump()).items()})
    return row


def _stopped(metrics: TrialMetrics | None) -> dict[str, Any]:
    """``stopped`` and where futility stopping ended the trial (NaN when it ran to the end)."""
    early = metrics.stopped_early if metrics else None
    return {"stopped": early is not None,
            "stopped_window": early.window if early else math.nan,
            "stopped_of": early.of if early else math.nan,
            "stopped_gain": early.gain if early else math.nan,
            "stopped_bound": early.bound if early else math.nan}


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def load_trials(experiments: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per trial of every experiment, in the order given (later stages last)."""
    rows: list[dict[str, Any]] = []
    locations = [str(e) for e in experiments]
    if not locations:
        raise AnalysisError("no experiment folder given")
    for index, location in enumerate(locations):
        rows.extend(_experiment(location, index))
    if not rows:
        raise AnalysisError(f"{', '.join(locations)}: no trials found")
    frame = pd.DataFrame(rows)
    frame = frame.sort_values(["experiment_index", "variant_order", "dataset", "seed"],
                              kind="stable").reset_index(drop=True)
    return frame


@functools.lru_cache(maxsize=128)
def load_losses(trial_path: str, experiment_path: str) -> np.ndarray | None:
    """The per-window test MSE of one trial (``curve.csv``), read-only; None when it has none.

    Cached: the verdicts, the campaign's gates and the report's figures all read the same
    finished curves, and a finished trial's curve never changes.
    """
    fs, _ = _filesystem(experiment_path)
    text = _read_text(fs, f"{trial_path}/curve.csv")
    if not text:
        return None
    losses = pd.read_csv(io.StringIO(text), usecols=["mse"])["mse"].to_numpy(dtype=np.float64)
    losses.setflags(write=False)
    return losses
