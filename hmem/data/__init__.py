"""Benchmark files and the synthetic series, checked, split, scaled and windowed.

The splitting half needs torch; reading configs and reports (``hmem report``, search spaces)
needs only the file half. So ``prepare`` and its types are imported on first use: a report does
not pay the ~2.5 s of importing torch.
"""

from hmem.data.loading import DATA_DIR_ENV, RawSeries, read_series, resolve_data_dir

_SPLITS = ("PreparedData", "Segment", "prepare")

__all__ = ["DATA_DIR_ENV", "RawSeries", "read_series", "resolve_data_dir", *_SPLITS]


def __getattr__(name: str):
    if name in _SPLITS:
        from hmem.data import splits

        return getattr(splits, name)
    raise AttributeError(f"module 'hmem.data' has no attribute {name!r}")
