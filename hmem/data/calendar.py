"""Calendar features (the backbone's extra tokens) and P8 time buckets.

Both depend only on timestamps, which are known in advance, so they can be computed for the
whole series at once without leaking any value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hmem.errors import DataError

# Each feature is scaled to [-0.5, 0.5] exactly as the reference's "timeF" encoding does.
_FEATURES = {
    "second_of_minute": lambda d: d.second / 59.0 - 0.5,
    "minute_of_hour": lambda d: d.minute / 59.0 - 0.5,
    "hour_of_day": lambda d: d.hour / 23.0 - 0.5,
    "day_of_week": lambda d: d.day_of_week / 6.0 - 0.5,
    "day_of_month": lambda d: (d.day - 1) / 30.0 - 0.5,
    "day_of_year": lambda d: (d.day_of_year - 1) / 365.0 - 0.5,
    "week_of_year": lambda d: (d.isocalendar().week.to_numpy() - 1) / 52.0 - 0.5,
    "month_of_year": lambda d: (d.month - 1) / 11.0 - 0.5,
}

# Which features a sampling step gets: finer steps add the finer features in front.
_BY_STEP = [
    (pd.Timedelta(seconds=1), "second", ["second_of_minute", "minute_of_hour", "hour_of_day",
                                         "day_of_week", "day_of_month", "day_of_year"]),
    (pd.Timedelta(minutes=1), "minute", ["minute_of_hour", "hour_of_day", "day_of_week",
                                         "day_of_month", "day_of_year"]),
    (pd.Timedelta(hours=1), "hour", ["hour_of_day", "day_of_week", "day_of_month",
                                     "day_of_year"]),
    (pd.Timedelta(days=1), "day", ["day_of_week", "day_of_month", "day_of_year"]),
    (pd.Timedelta(days=7), "week", ["day_of_month", "week_of_year"]),
    (pd.Timedelta(days=28), "month", ["month_of_year"]),
]


def sampling_unit(dates: pd.DatetimeIndex) -> str:
    """The calendar unit of a series from its median step (``minute`` for ETTm1 and Weather)."""
    if len(dates) < 2:
        raise DataError("a series needs at least two timestamps to infer its frequency")
    step = pd.Series(dates).diff().median()
    unit = _BY_STEP[0][1]
    for threshold, name, _ in _BY_STEP:
        if step >= threshold:
            unit = name
    return unit


def calendar_features(dates: pd.DatetimeIndex) -> np.ndarray:
    """``[T, M]`` features for the series' own frequency (five for minute-level data)."""
    unit = sampling_unit(dates)
    names = next(features for _, name, features in _BY_STEP if name == unit)
    columns = [np.asarray(_FEATURES[name](dates), dtype=np.float64) for name in names]
    return np.stack(columns, axis=1)


def time_buckets(dates: pd.DatetimeIndex, count: int) -> np.ndarray:
    """P8 bucket of every row: ``((season * 7 + day_of_week) * 24 + hour) mod count``.

    ``season = floor(day_of_year / 365 * 12)``. A window's bucket is the bucket of its last input
    row. With 4 or 8 buckets the formula reduces to ``hour mod count`` (168 and 24 are multiples
    of both); it is kept whole so that other counts behave as in the reference.
    """
    season = np.floor(dates.day_of_year.to_numpy() / 365.0 * 12).astype(np.int64)
    code = (season * 7 + dates.day_of_week.to_numpy()) * 24 + dates.hour.to_numpy()
    return (code % count).astype(np.int64)
