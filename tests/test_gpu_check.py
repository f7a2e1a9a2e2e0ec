"""``benchmarks/gpu_check.py`` on the CPU over a tiny stream, so that the script a GPU owner runs
cannot rot: every check runs, the sync-free step agrees exactly with the CPU's, and it prints its
one table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_check_on_the_cpu(tmp_path, cache_dir, capsys, embedded_ray):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    quickstart = str(REPO / "search_spaces/quickstart.yaml")  # a small backbone: a cheap check
    code = gpu_check.main(["--device", "cpu", "--space", quickstart,
                           "--dataset", "synthetic", "--windows", "60",
                           "--quickstart-seeds", "0", "--quickstart-variants", "p2p7p8",
                           "--sharing", "2",
                           "--cache-dir", str(cache_dir), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    table = out[out.index("gpu_check on cpu"):].splitlines()
    rows = {line.split("  ")[0]: line for line in table[1:]}
    assert code == 0, out
    assert list(rows) == ["quickstart", "agreement", "step eager", "step graphs", "sharing 2"]
    assert "1/1 trials finished" in rows["quickstart"]
    assert "relative difference 0.00e+00 (ok)" in rows["agreement"]  # sync-free: same numbers
    assert "ms/step" in rows["step eager"]
    assert "ms/step" in rows["step graphs"] and "the same MSE as eager" in rows["step graphs"]
    assert "2/2 finished" in rows["sharing 2"] and "trials/hour" in rows["sharing 2"]
