"""Do two checkouts give the same numbers? For refactors and speed work that must not change them.

Runs ``hmem run ... --save-forecasts`` for each variant with the code of ``--before`` and of
``--after`` (two source trees, e.g. ``git worktree add ../before HEAD~1``), on the same data and
artefact cache, and prints per variant whether the test MSE, every per-window score and every
forecast are bit-identical (or the largest difference).

    python benchmarks/same_numbers.py --before ../before --after . --data-dir ../shared/data \\
        --variants p2p7p8,p2p7p8_frozen,b2 --set data.max_test_windows=3000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


def run(tree: Path, variant: str, args: argparse.Namespace, out: Path) -> None:
    sets = [item for pair in args.set for item in ("--set", pair)]
    subprocess.run([sys.executable, "-m", "hmem.cli", "run", args.space, "--variant", variant,
                    "--dataset", args.dataset, "--data-dir", str(Path(args.data_dir).resolve()),
                    "--cache-dir", str(Path(args.cache_dir).resolve()), "--out", str(out),
                    "--save-forecasts", *sets], cwd=tree, check=True,
                   env={**os.environ, "PYTHONPATH": str(tree.resolve())},
                   stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, type=Path)
    parser.add_argument("--after", default=Path("."), type=Path)
    parser.add_argument("--space", default="search_spaces/plan.yaml")
    parser.add_argument("--dataset", default="ETTm1")
    parser.add_argument("--variants", default="p2p7p8,p2p7p8_frozen,b2")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--cache-dir", default=os.environ.get("HMEM_CACHE_DIR",
                                                              "results/cache"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for variant in args.variants.split(","):
            outs = {side: Path(scratch) / f"{side}-{variant}" for side in ("before", "after")}
            for side, tree in (("before", args.before), ("after", args.after)):
                run(tree, variant, args, outs[side])
            mse = [json.loads((outs[s] / "metrics.json").read_text())["mse"] for s in outs]
            curves = [pd.read_csv(outs[s] / "curve.csv")["mse"].to_numpy() for s in outs]
            forecasts = []
            for side in outs:
                with np.load(outs[side] / "forecasts.npz", allow_pickle=False) as saved:
                    forecasts.append(saved["forecast"])
            same = (mse[0] == mse[1] and np.array_equal(*curves)
                    and np.array_equal(*forecasts))
            gap = float(np.abs(forecasts[0] - forecasts[1]).max())
            print(f"{variant:<16} MSE {mse[0]:.10f} / {mse[1]:.10f}  "
                  f"{'bit-identical' if same else f'DIFFERENT (max forecast gap {gap:.3g})'}")


if __name__ == "__main__":
    main()
