"""Benchmark files and the synthetic series, checked, split, scaled and windowed."""

from hmem.data.loading import DATA_DIR_ENV, RawSeries, read_series, resolve_data_dir
from hmem.data.splits import PreparedData, Segment, prepare

__all__ = ["DATA_DIR_ENV", "PreparedData", "RawSeries", "Segment", "prepare", "read_series",
           "resolve_data_dir"]
