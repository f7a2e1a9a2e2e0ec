"""Trials per hour of a search on this machine, and the launcher's overhead.

    python benchmarks/tune_throughput.py --data-dir ../shared/data \
        [--space search_spaces/control.yaml --dataset ETTm1 --seeds 0 1 2 3]

1. Runs the space's variants on one dataset over the given seeds with ``hmem tune launch``
   (embedded local Ray, one CPU per trial) and times the whole search, pretraining included
   (a backbone already in the cache is loaded, as it would be for any later search).
2. Runs the same trials with ``hmem run`` one after another, each on one core, and times each.
   ``--standalone-seeds K`` runs only the first K seeds and scales by the seed count (every seed
   does the same work); the default runs them all.
3. Prints trials/hour and the overhead: the search's wall time against the standalone time
   divided by the CPUs the search had (the best any scheduler could do with those trials).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _space_for(space: Path, dataset: str, seeds: list[int], out: Path) -> Path:
    spec = yaml.safe_load(space.read_text())
    spec["datasets"] = {dataset: spec["datasets"][dataset]}
    spec["seeds"] = seeds
    spec["name"] = f"{spec['name']}-throughput"
    path = out / "space.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="search_spaces/control.yaml")
    parser.add_argument("--dataset", default="ETTm1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--standalone-seeds", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="hmem-throughput-"))
    space = _space_for(REPO / args.space, args.dataset, args.seeds, out)
    spec = yaml.safe_load(space.read_text())
    common = [arg for item in args.overrides for arg in ("--set", item)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    hmem = [sys.executable, "-m", "hmem.cli"]

    began = time.perf_counter()
    subprocess.run([*hmem, "tune", "launch", str(space), "--storage", str(out / "tune"),
                    *common], check=True, cwd=REPO)
    tune_seconds = time.perf_counter() - began
    trials = len(spec["variants"]) * len(args.seeds)

    standalone_seeds = args.seeds[: args.standalone_seeds or len(args.seeds)]
    standalone = 0.0
    for variant in spec["variants"]:
        for seed in standalone_seeds:
            began = time.perf_counter()
            subprocess.run([*hmem, "run", str(space), "--variant", variant, "--dataset",
                            args.dataset, "--seed", str(seed), "--out",
                            str(out / "runs" / f"{variant}-{seed}"), *common],
                           check=True, cwd=REPO, stdout=subprocess.DEVNULL)
            standalone += time.perf_counter() - began
    standalone *= len(args.seeds) / len(standalone_seeds)
    cpus = os.cpu_count() or 1
    ideal = standalone / cpus
    result = {
        "trials": trials,
        "tune_wall_s": round(tune_seconds, 1),
        "trials_per_hour": round(3600 * trials / tune_seconds, 1),
        "standalone_sequential_s": round(standalone, 1),
        "standalone_seeds_run": len(standalone_seeds),
        "cpus": cpus,
        "ideal_parallel_s": round(ideal, 1),
        "launcher_overhead_pct": round(100 * (tune_seconds / ideal - 1), 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
