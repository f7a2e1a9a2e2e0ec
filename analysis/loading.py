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
from hmem.errors import HmemError
from hmem.spaces import Cell, SearchSpace

LAUNCH_RECORD = "hmem_launch.json"  # written by tune.launcher at launch

#: Order of the plan's stages (plan section 5.2) and the stage each direction belongs to.
STAGE_OF = {"baseline": "S0", "control": "S0", "A1": "S1", "A2": "S1", "B1": "S2", "B2": "S2",
            "B3": "S2", "S3": "S3"}

IDENTITY = ["experiment", "stage", "direction", "variant", "dataset", "seed", "regime",
            "backbone_key", "backbone_online_lr", "status", "valid", "note"]
METRICS = ["mse", "mae", "rmse", "steps", "ms_per_step", "wall_s", "warmup_mse"]


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


def _space_of(record: dict[str, Any] | None) -> SearchSpace | None:
    if record is None:
        return None
    space = SearchSpace.model_validate(record["space"])
    space._source = record.get("space_source", "launch record")
    return space


def _experiment(location: str, index: int) -> list[dict[str, Any]]:
    from tune.ray_api import load_experiment  # Ray is only needed when reading experiments

    fs, root = _filesystem(location)
    if fs.get_file_info(root).type != pyarrow.fs.FileType.Directory:
        raise AnalysisError(f"{location}: no such experiment folder")
    try:
        analysis = load_experiment(location if "://" in location else root)
    except Exception as err:  # Ray raises ValueError / FileNotFoundError / its own TuneError
        raise AnalysisError(f"{location}: not a Ray Tune experiment folder ({err})") from None
    raw_record = _read_text(fs, f"{root}/{LAUNCH_RECORD}")
    record = json.loads(raw_record) if raw_record else None
    space = _space_of(record)
    overrides = (record or {}).get("overrides") or {}
    where = {"name": Path(root).name, "location": location, "index": index,
             "order": list(space.variants) if space else []}

    rows = []
    for trial in analysis.trials:
        cell = Cell(**trial.config["cell"])
        trial_root = trial.path  # a path inside the experiment's filesystem
        metrics_text = _read_text(fs, f"{trial_root}/metrics.json")
        config_text = _read_text(fs, f"{trial_root}/config.json")
        metrics = json.loads(metrics_text) if metrics_text else {}
        if config_text:
            cfg = TrialConfig.model_validate(json.loads(config_text))
        elif space is not None:
            cfg = space.trial_config(cell.variant, cell.dataset, cell.seed, overrides)
        else:
            cfg = None
        status = trial.status
        mse = metrics.get("mse", math.nan)
        note = ""
        if status in ("PENDING", "RUNNING"):
            # Ray saves a running trial as PENDING, so the state file cannot tell them apart.
            note = "not finished (pending or running)"
        elif status != "TERMINATED":
            note = f"trial {status.lower()}" + (f": {trial.error_file}" if status == "ERROR"
                                                 and getattr(trial, "error_file", None) else "")
        elif not metrics:
            note = "no metrics.json (stopped early or not synced)"
        elif not math.isfinite(mse):
            note = f"non-finite mse ({mse})"
        rows.append(_row(where, cell, cfg, metrics, status, note, trial.trial_id, trial_root))
    if space is not None and space.search.kind == "grid":
        # Ray creates a grid's trials as it goes: an interrupted search has not created them all.
        seen = {(row["variant"], row["dataset"], row["seed"]) for row in rows}
        for cell in space.cells():
            if (cell.variant, cell.dataset, cell.seed) not in seen:
                cfg = space.trial_config(cell.variant, cell.dataset, cell.seed, overrides)
                rows.append(_row(where, cell, cfg, {}, "NOT_STARTED", "not started", None, None))
    return rows


def _row(where: dict[str, Any], cell: Cell, cfg: TrialConfig | None, metrics: dict[str, Any],
         status: str, note: str, trial_id: str | None, trial_path: str | None) -> dict[str, Any]:
    order = where["order"]
    direction = cfg.direction if cfg is not None else "unknown"
    row = {
        "experiment": where["name"],
        "experiment_path": where["location"],
        "experiment_index": where["index"],
        "variant_order": order.index(cell.variant) if cell.variant in order else len(order),
        "stage": STAGE_OF.get(direction, "?"),
        "direction": direction,
        "variant": cell.variant,
        "dataset": cell.dataset,
        "seed": cell.seed,
        "regime": metrics.get("regime", cfg.regime if cfg else None),
        "backbone_key": metrics.get("backbone_key"),
        "backbone_online_lr": (cfg.online.lr * cfg.backbone.online_lr_scale
                               if cfg else math.nan),
        "status": status,
        "valid": not note,
        "note": note,
        "mse": metrics.get("mse", math.nan),
        "mae": metrics.get("mae", math.nan),
        "rmse": metrics.get("rmse", math.nan),
        "steps": metrics.get("steps", math.nan),
        "ms_per_step": metrics.get("ms_per_step", math.nan),
        "wall_s": metrics.get("seconds_total", math.nan),
        "warmup_mse": _number(metrics.get("warmup_mse")),
        **{name: _number(value) for name, value in metrics.items() if name.startswith("acted/")},
        "trial_id": trial_id,
        "trial_path": trial_path,
    }
    if cfg is not None:
        row.update({f"cfg.{k}": v for k, v in flatten(cfg.model_dump()).items()})
    return row


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
