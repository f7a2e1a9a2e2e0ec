"""Shared fixtures: a tiny configuration for fast online runs, a per-session artefact cache, and
the benchmark data directory.

Tests that need the real benchmark files use the ``data_dir`` fixture. It finds them through
``$HMEM_DATA_DIR`` (or ``../shared/data`` beside the checkout). When they are missing the test is
skipped with the reason, unless ``HMEM_REQUIRE_DATA=1`` (set by ``.ci/run``), where it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

# Ray is imported by some tests: keep every Ray instance they start on 127.0.0.1 (see
# tune/loopback.py). This must happen before the first import of Ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest

from hmem.config import build_trial_config

REPO = Path(__file__).resolve().parents[1]

#: Small enough that a whole online run takes a second or two on one core.
TINY = {
    "data": {"dataset": "synthetic", "seq_len": 48, "horizon": 12, "max_val_windows": 60,
             "max_test_windows": 160, "synthetic": {"rows": 1600, "variables": 3}},
    "backbone": {"kind": "nlinear"},
    "pretrain": {"epochs": 2, "batch_size": 64},
    "chrc": {"feature_dim": 16, "hidden_dim": 24, "refiner_dim": 32, "gate_dim": 8,
             "memory": {"capacity": 40, "min_entries": 8}, "retrieval": {"top_k": 4},
             "buckets": {"count": 2}},
    "online": {"lr": 1e-3},
}


@pytest.fixture
def tiny():
    """``tiny(overrides...)`` -> a validated TrialConfig built on :data:`TINY`."""

    def build(*layers):
        return build_trial_config(TINY, *layers)

    return build


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hmem-cache")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = Path(os.environ.get("HMEM_DATA_DIR") or REPO.parent / "shared" / "data")
    wanted = [root / "ETTm1.csv.gz", root / "weather.csv.gz"]
    missing = [str(p) for p in wanted if not p.is_file()]
    if missing:
        reason = f"benchmark files missing: {', '.join(missing)} (set HMEM_DATA_DIR)"
        if os.environ.get("HMEM_REQUIRE_DATA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return root


@pytest.fixture
def run_online(cache_dir):
    """``run_online(cfg, data=None, base=None)`` -> (RunResult, PreparedData), fully in-process."""
    from hmem.artefacts import load_or_pretrain
    from hmem.data import prepare
    from hmem.online import run_trial

    def run(cfg, data=None, base=None):
        data = data if data is not None else prepare(cfg.data)
        pretrained = load_or_pretrain(cfg, data, cache_dir)
        return run_trial(cfg, data, pretrained, base=base, keep_forecasts=True), data

    return run


@pytest.fixture(scope="session")
def embedded_ray():
    """For tests that launch in this process: the first launch starts the embedded Ray on
    127.0.0.1 and leaves it up (as it does for a notebook), the next ones connect to it, and it
    stops when the session ends. Starting and stopping one per test cost about 5 s each."""
    yield
    import ray

    ray.shutdown()
