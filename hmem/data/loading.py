"""Reading a benchmark CSV into a checked frame, or refusing it with the reason.

A file has a ``date`` column and numeric columns (``.csv`` or ``.csv.gz``). Nothing is dropped or
filled: every problem is reported with the file, the column and the line (the header is line 1),
because a silently repaired series makes every downstream number unreproducible.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hmem.errors import DataError

DATA_DIR_ENV = "HMEM_DATA_DIR"

#: Built-in dataset names and the file names they may have in the data directory.
BUILTIN_FILES = {
    "ETTm1": ("ETTm1.csv.gz", "ETTm1.csv"),
    "Weather": ("weather.csv.gz", "weather.csv"),
}
SYNTHETIC = "synthetic"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawSeries:
    """A validated multivariate series: timestamps, values ``[T, C]`` and where it came from."""

    name: str
    dates: pd.DatetimeIndex
    values: np.ndarray  # [T, C] float64
    columns: tuple[str, ...]
    content_hash: str  # sha256 of the file bytes (or of the generator spec)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The ``--data-dir`` flag wins over ``$HMEM_DATA_DIR``; ``None`` when neither is set."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    return Path(chosen).expanduser() if chosen else None


def locate(dataset: str, data_dir: str | os.PathLike | None) -> Path:
    """Map a built-in name or a path to an existing file, or explain what to do."""
    if dataset in BUILTIN_FILES:
        root = resolve_data_dir(data_dir)
        if root is None:
            raise DataError(
                f"dataset {dataset!r} needs a data directory: pass --data-dir DIR or set "
                f"${DATA_DIR_ENV} (it must hold {' or '.join(BUILTIN_FILES[dataset])})"
            )
        for name in BUILTIN_FILES[dataset]:
            if (root / name).is_file():
                return root / name
        raise DataError(
            f"dataset {dataset!r}: none of {', '.join(BUILTIN_FILES[dataset])} is in the data "
            f"directory {root}"
        )
    path = Path(dataset).expanduser()
    if path.suffix == ".csv" or path.name.endswith(".csv.gz"):
        if not path.is_file():
            raise DataError(f"dataset file {path} does not exist")
        return path
    raise DataError(
        f"unknown dataset {dataset!r}: use one of {', '.join([*BUILTIN_FILES, SYNTHETIC])} or a "
        f"path to a .csv / .csv.gz file with a 'date' column and numeric columns"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_series(
    path: Path, name: str | None = None, *, keep_identical_duplicates: bool = False
) -> RawSeries:
    """Load and check one file; raise :class:`DataError` naming file, column and line.

    ``keep_identical_duplicates`` accepts a repeated timestamp whose row repeats the previous row
    exactly (the public Weather file has one such row, and the published window counts include
    it); the row is kept, never dropped, and each one is logged. A repeated timestamp with other
    values is always an error.

    A process reads each file once: a campaign plans every stage from the same files, and a Ray
    worker reused from trial to trial reads them again (parsing Weather costs ~1 s). The cache is
    keyed on the file's path, size and modification time, so a changed file is read again; the
    values it hands out are shared, hence read-only.
    """
    try:
        stat = os.stat(path)
    except OSError as err:
        raise DataError(f"{path}: cannot be read as CSV ({err})") from None
    return _read_series(Path(path), stat.st_size, stat.st_mtime_ns, name or path.name,
                        keep_identical_duplicates)


@functools.lru_cache(maxsize=4)
def _read_series(path: Path, size: int, mtime_ns: int, name: str,
                 keep_identical_duplicates: bool) -> RawSeries:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, EOFError) as err:  # unreadable, bad gzip, ragged rows
        raise DataError(f"{path}: cannot be read as CSV ({err})") from None
    if "date" not in frame.columns:
        raise DataError(
            f"{path}: no 'date' column (columns are {list(frame.columns)[:8]}); the file needs a "
            f"'date' column of timestamps"
        )
    numeric_columns = [column for column in frame.columns if column != "date"]
    if not numeric_columns:
        raise DataError(f"{path}: no value columns besides 'date'")
    if frame.empty:
        raise DataError(f"{path}: has a header but no rows")
    dates = _parse_dates(path, frame["date"])
    values = np.column_stack([_parse_numbers(path, frame[c], c) for c in numeric_columns])
    _check_order(path, frame["date"], dates, values, keep_identical_duplicates)
    values.setflags(write=False)
    return RawSeries(
        name=name,
        dates=dates,
        values=values,
        columns=tuple(numeric_columns),
        content_hash=file_sha256(path),
    )


def _line(row: int) -> int:
    """File line of a 0-based data row (the header is line 1)."""
    return row + 2


def _parse_dates(path: Path, raw: pd.Series) -> pd.DatetimeIndex:
    parsed = pd.to_datetime(raw, errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{path}: column 'date', line {_line(row)}: cannot parse {raw.iloc[row]!r} as a "
            f"timestamp ({bad.size} unparseable in all)"
        )
    return pd.DatetimeIndex(parsed)


def _check_order(
    path: Path, raw: pd.Series, dates: pd.DatetimeIndex, values: np.ndarray, keep_identical: bool
) -> None:
    steps = np.diff(dates.asi8)
    backwards = np.flatnonzero(steps < 0)
    if backwards.size:
        row = int(backwards[0]) + 1
        raise DataError(
            f"{path}: column 'date', line {_line(row)}: timestamp {raw.iloc[row]!r} is earlier "
            f"than line {_line(row - 1)} ({raw.iloc[row - 1]!r}); rows must be in increasing "
            f"time order"
        )
    for row in (np.flatnonzero(steps == 0) + 1).tolist():
        identical = bool(np.array_equal(values[row], values[row - 1]))
        if keep_identical and identical:
            log.warning(
                "%s: line %d repeats line %d exactly (timestamp %s); kept, as the published "
                "protocol counts it", path, _line(row), _line(row - 1), raw.iloc[row]
            )
            continue
        hint = (
            "; the rows are identical: set data.duplicate_timestamps=keep_identical to keep them"
            if identical else " with different values"
        )
        raise DataError(
            f"{path}: column 'date', line {_line(row)}: duplicate timestamp {raw.iloc[row]!r} "
            f"(same as line {_line(row - 1)}){hint}"
        )


def _parse_numbers(path: Path, raw: pd.Series, column: str) -> np.ndarray:
    numbers = pd.to_numeric(raw.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    text = raw.to_numpy()
    lowered = raw.str.strip().str.lower().to_numpy()
    missing = np.isin(lowered, ["", "nan", "na", "n/a", "null", "none"])
    not_a_number = np.isnan(numbers) & ~missing
    if not_a_number.any():
        row = int(np.flatnonzero(not_a_number)[0])
        raise DataError(
            f"{path}: column {column!r}, line {_line(row)}: {text[row]!r} is not a number "
            f"(value columns must be numeric)"
        )
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(
            f"{path}: column {column!r}, line {_line(row)}: missing or NaN value "
            f"({int(missing.sum())} in this column); nothing is filled in, fix the file"
        )
    infinite = ~np.isfinite(numbers)
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        raise DataError(
            f"{path}: column {column!r}, line {_line(row)}: infinite value {text[row]!r}"
        )
    return numbers
