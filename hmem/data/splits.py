"""Splits, train-only scaling and windows: a series made ready for pretraining and the online loop.

Window ``i`` of a segment has input rows ``[s_i, s_i + seq_len)`` and target rows
``[s_i + seq_len, s_i + seq_len + H)``. Validation and test segments start ``seq_len`` rows early
so that their first lookback is complete. The scaler sees the train rows only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from hmem.config import DataConfig
from hmem.data.calendar import calendar_features
from hmem.data.loading import SYNTHETIC, RawSeries, locate, read_series
from hmem.data.synthetic import synthetic_series
from hmem.errors import DataError

# ETTm1's published "online" borders, in months of 30 days: train 4, validation 1, test to 20.
_ETT_MONTH_ROWS = 30 * 24 * 4
_ETT_BORDERS_MONTHS = (4, 5, 20)


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, end)`` of one split, lookback included."""

    name: str
    start: int
    end: int

    def window_starts(self, seq_len: int, horizon: int) -> range:
        return range(self.start, self.end - seq_len - horizon + 1)


@dataclass(frozen=True)
class PreparedData:
    """A scaled series with its splits; everything the pretraining and online code reads."""

    name: str
    content_hash: str
    dates: pd.DatetimeIndex
    values: torch.Tensor  # [T, C] float32, scaled with train statistics
    marks: torch.Tensor  # [T, M] float32 calendar features
    mean: np.ndarray  # [C] scaler statistics, to map forecasts back to data units
    std: np.ndarray
    segments: dict[str, Segment]
    seq_len: int
    horizon: int
    columns: tuple[str, ...]

    @property
    def n_vars(self) -> int:
        return self.values.shape[1]

    @property
    def n_marks(self) -> int:
        return self.marks.shape[1]

    def to(self, device: torch.device) -> PreparedData:
        return replace(self, values=self.values.to(device), marks=self.marks.to(device))

    def split_spec(self) -> dict[str, list[int]]:
        """The borders as plain data, for cache keys and logs."""
        return {name: [seg.start, seg.end] for name, seg in self.segments.items()}


def load_raw(cfg: DataConfig, data_dir: str | None) -> RawSeries:
    if cfg.dataset == SYNTHETIC:
        return synthetic_series(cfg.synthetic)
    path = locate(cfg.dataset, data_dir)
    keep = cfg.duplicate_timestamps == "keep_identical"
    return read_series(path, name=cfg.dataset, keep_identical_duplicates=keep)


def split_borders(raw: RawSeries, cfg: DataConfig) -> dict[str, Segment]:
    rows, seq_len = len(raw.values), cfg.seq_len
    if raw.name == "ETTm1":
        train_end, val_end, test_end = (m * _ETT_MONTH_ROWS for m in _ETT_BORDERS_MONTHS)
        if rows < test_end:
            raise DataError(
                f"{raw.name}: the published split needs {test_end} rows, the file has {rows}"
            )
    else:
        n_train = int(rows * cfg.train_ratio)
        n_test = int(rows * (1.0 - cfg.train_ratio - cfg.val_ratio) + 1e-9)
        train_end, val_end, test_end = n_train, rows - n_test, rows
    segments = {
        "train": Segment("train", 0, train_end),
        "val": Segment("val", train_end - seq_len, val_end),
        "test": Segment("test", val_end - seq_len, test_end),
    }
    need = seq_len + 2 * cfg.horizon
    for seg in segments.values():
        if seg.start < 0 or seg.end - seg.start < need:
            raise DataError(
                f"{raw.name}: the {seg.name} split has {max(seg.end - seg.start, 0)} rows "
                f"(lookback included) but seq_len + 2*H = {need} are needed; the file has {rows} "
                f"rows in all: use a longer file or a shorter data.seq_len / data.horizon"
            )
    return segments


def prepare(cfg: DataConfig, data_dir: str | None = None) -> PreparedData:
    """Load, check, split and scale ``cfg.dataset``."""
    raw = load_raw(cfg, data_dir)
    segments = split_borders(raw, cfg)
    train = raw.values[: segments["train"].end]
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    constant = np.flatnonzero(std == 0)
    if constant.size:
        column = raw.columns[int(constant[0])]
        raise DataError(
            f"{raw.name}: column {column!r} is constant over the train split, so it cannot be "
            f"standardised; drop it from the file"
        )
    scaled = (raw.values - mean) / std
    return PreparedData(
        name=raw.name,
        content_hash=raw.content_hash,
        dates=raw.dates,
        values=torch.from_numpy(scaled.astype(np.float32)),
        marks=torch.from_numpy(calendar_features(raw.dates).astype(np.float32)),
        mean=mean,
        std=std,
        segments=segments,
        seq_len=cfg.seq_len,
        horizon=cfg.horizon,
        columns=raw.columns,
    )
