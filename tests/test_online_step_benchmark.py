"""``benchmarks/online_step.py`` over a tiny synthetic stream, so that the figures a speed note
quotes (ms per step, and ``--floor``'s pieces of a step) keep coming from a script that runs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_step_benchmark_times_a_step_and_each_of_its_pieces(cache_dir, capsys):
    spec = importlib.util.spec_from_file_location("online_step",
                                                  REPO / "benchmarks/online_step.py")
    online_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(online_step)
    online_step.main(["--space", str(REPO / "search_spaces/control.yaml"), "--dataset",
                      "synthetic", "--variants", "p2p7p8", "--modes", "eager", "--steps", "20",
                      "--warm", "5", "--floor", "--set", "chrc.memory.capacity=100", "--cache-dir", str(cache_dir)])
    out = capsys.readouterr().out
    pieces = dict(re.findall(r"^  (\S.*?)\s+(\d+\.\d+)$", out, re.MULTILINE))
    names = [name.split(" (")[0] for name in pieces]
    assert names == ["backbone forward + backward", "backbone forward",
                     "CHRC correction forward + backward", "CHRC correction forward",
                     "AdamW, routed bucket", "AdamW, backbone", "sum"]
    times = [float(ms) for ms in pieces.values()]
    assert all(ms > 0 for ms in times) and abs(sum(times[:-1]) - times[-1]) < 0.01
    step = re.search(r"^p2p7p8\s+eager\s+(\d+\.\d+)", out, re.MULTILINE)
    assert step is not None and float(step.group(1)) > 0
