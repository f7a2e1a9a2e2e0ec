"""Loading, splitting and scaling: the real benchmark files, the synthetic series, and every kind
of bad input, each refused with the file, column and line at fault."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from hmem.config import DataConfig, SyntheticConfig
from hmem.data import prepare, read_series
from hmem.data.calendar import calendar_features, sampling_unit, time_buckets
from hmem.data.synthetic import synthetic_series
from hmem.errors import DataError


def _write(path, text):
    path.write_text(text)
    return path


def _series_csv(tmp_path, rows=400, freq="1h", name="ok.csv", columns=("a", "OT")):
    dates = pd.date_range("2022-01-01", periods=rows, freq=freq)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"date": dates.strftime("%Y-%m-%d %H:%M:%S")})
    for column in columns:
        frame[column] = rng.normal(size=rows)
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- real files


def test_ettm1_published_split(data_dir):
    data = prepare(DataConfig(dataset="ETTm1"), data_dir)
    assert data.values.shape == (69680, 7)
    assert data.split_spec() == {"train": [0, 11520], "val": [11008, 14400],
                                 "test": [13888, 57600]}
    assert len(data.segments["test"].window_starts(512, 96)) == 43105
    assert len(data.segments["val"].window_starts(512, 96)) == 2785
    train = data.values[:11520].double()
    assert train.mean(0).abs().max() < 1e-4  # scaled with train statistics only
    assert (train.std(0, unbiased=False) - 1).abs().max() < 1e-4
    assert data.values[14400:].mean(0).abs().max() > 0.05  # ...which do not centre the test rows
    assert data.n_marks == 5 and data.marks.abs().max() <= 0.5


def test_weather_ratio_split_and_its_repeated_row(data_dir):
    with pytest.raises(DataError, match=r"line 19046: duplicate timestamp '2020-05-12 06:00:00'.*"
                                        r"identical.*keep_identical"):
        prepare(DataConfig(dataset="Weather"), data_dir)
    data = prepare(DataConfig(dataset="Weather", duplicate_timestamps="keep_identical"), data_dir)
    assert data.values.shape == (52696, 21)
    assert len(data.segments["test"].window_starts(512, 96)) == 39427
    assert data.segments["train"].end == int(52696 * 0.2)
    assert data.segments["test"].start == 52696 - int(52696 * 0.75) - 512


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_shaped():
    first = synthetic_series(SyntheticConfig(rows=3000, variables=5))
    second = synthetic_series(SyntheticConfig(rows=3000, variables=5))
    assert np.array_equal(first.values, second.values)
    assert first.content_hash == second.content_hash
    assert first.values.shape == (3000, 5) and first.columns[-1] == "OT"
    other = synthetic_series(SyntheticConfig(rows=3000, variables=4))
    assert other.content_hash != first.content_hash
    # regime shifts: the level moves between regimes by more than the noise
    segments = np.array_split(first.values[:, 0], 20)
    assert np.ptp([s.mean() for s in segments]) > 0.5


def test_user_file_gz_and_plain_load_the_same(tmp_path):
    plain = _series_csv(tmp_path, rows=600)
    packed = tmp_path / "ok.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    cfg = dict(seq_len=48, horizon=12)
    a = prepare(DataConfig(dataset=str(plain), **cfg))
    b = prepare(DataConfig(dataset=str(packed), **cfg))
    assert np.array_equal(a.values.numpy(), b.values.numpy())
    assert a.n_marks == 4  # hourly data: hour, weekday, day of month, day of year


def test_a_file_is_read_once_until_it_changes(tmp_path):
    """A campaign plans each stage from the same files: the second read is the first's, and an
    edited file (a notebook user fixing a row) is read again, never served stale."""
    path = _series_csv(tmp_path, rows=200)
    first = read_series(path)
    assert read_series(path) is first
    with pytest.raises(ValueError, match="read-only"):
        first.values[0, 0] = 1.0  # shared between callers: nobody may change it
    frame = pd.read_csv(path)
    frame.loc[0, "a"] = 123.0
    frame.to_csv(path, index=False)
    edited = read_series(path)
    assert edited is not first and edited.values[0, 0] == 123.0
    assert edited.content_hash != first.content_hash


def test_calendar_follows_the_files_frequency():
    minutes = pd.date_range("2021-03-01", periods=10, freq="10min")
    days = pd.date_range("2021-03-01", periods=10, freq="D")
    assert sampling_unit(minutes) == "minute" and calendar_features(minutes).shape == (10, 5)
    assert sampling_unit(days) == "day" and calendar_features(days).shape == (10, 3)
    feats = calendar_features(pd.DatetimeIndex(["2021-01-01 00:00", "2021-12-31 23:59"]))
    assert feats[0, 0] == -0.5 and feats[1, 0] == 0.5  # minute of hour spans [-0.5, 0.5]


def test_time_buckets_formula():
    dates = pd.DatetimeIndex(["2021-06-15 13:45", "2021-06-16 13:45", "2021-02-01 02:00"])
    for count in (2, 3, 4, 7):
        expected = [((int(d.day_of_year / 365 * 12) * 7 + d.day_of_week) * 24 + d.hour) % count
                    for d in dates]
        assert time_buckets(dates, count).tolist() == expected


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "text, message",
    [
        ("time,a\n2021-01-01,1\n", r"no 'date' column"),
        ("date,a\n2021-01-01 00:00,1\nnot a time,2\n", r"column 'date', line 3: cannot parse 'not a time'"),
        ("date,a\n2021-01-01 00:00,1\n2021-01-01 00:00,2\n", r"line 3: duplicate timestamp .* with different values"),
        ("date,a\n2021-01-01 01:00,1\n2021-01-01 00:00,2\n", r"line 3: timestamp '2021-01-01 00:00' is earlier than line 2"),
        ("date,a\n2021-01-01 00:00,1\n2021-01-01 01:00,abc\n", r"column 'a', line 3: 'abc' is not a number"),
        ("date,a\n2021-01-01 00:00,1\n2021-01-01 01:00,\n", r"column 'a', line 3: missing or NaN value"),
        ("date,a\n2021-01-01 00:00,NaN\n2021-01-01 01:00,1\n", r"column 'a', line 2: missing or NaN value"),
        ("date,a\n2021-01-01 00:00,1\n2021-01-01 01:00,inf\n", r"column 'a', line 3: infinite value 'inf'"),
        ("date\n2021-01-01 00:00\n", r"no value columns"),
        ("date,a\n", r"no rows"),
    ],
)
def test_bad_files_name_file_column_and_line(tmp_path, text, message):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=message) as err:
        read_series(path)
    assert str(path) in str(err.value)


def test_identical_repeated_row_is_kept_only_when_asked(tmp_path):
    path = _write(tmp_path / "dup.csv", "date,a\n2021-01-01 00:00,1\n2021-01-01 00:00,1\n"
                                        "2021-01-01 01:00,2\n")
    with pytest.raises(DataError, match="keep_identical"):
        read_series(path)
    series = read_series(path, keep_identical_duplicates=True)
    assert series.values[:, 0].tolist() == [1, 1, 2]  # nothing dropped


def test_too_short_file_names_the_split(tmp_path):
    path = _series_csv(tmp_path, rows=300)
    with pytest.raises(DataError, match=r"the (train|val) split has \d+ rows .* seq_len \+ 2\*H = 120"):
        prepare(DataConfig(dataset=str(path), seq_len=96, horizon=12))


def test_constant_column_cannot_be_scaled(tmp_path):
    path = _series_csv(tmp_path, rows=600)
    frame = pd.read_csv(path)
    frame["a"] = 3.0
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="column 'a' is constant over the train split"):
        prepare(DataConfig(dataset=str(path), seq_len=48, horizon=12))


def test_unknown_dataset_and_missing_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("HMEM_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="unknown dataset 'ETTh9': use one of ETTm1, Weather, synthetic"):
        prepare(DataConfig(dataset="ETTh9"))
    with pytest.raises(DataError, match="needs a data directory: pass --data-dir DIR or set \\$HMEM_DATA_DIR"):
        prepare(DataConfig(dataset="ETTm1"))
    with pytest.raises(DataError, match="none of ETTm1.csv.gz, ETTm1.csv is in the data directory"):
        prepare(DataConfig(dataset="ETTm1"), tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        prepare(DataConfig(dataset=str(tmp_path / "absent.csv")))
    monkeypatch.setenv("HMEM_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=str(tmp_path)):
        prepare(DataConfig(dataset="Weather"))
