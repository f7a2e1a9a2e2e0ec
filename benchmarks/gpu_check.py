"""The GPU path in one short script: does it run, does it agree with the CPU, what does it cost.

    python benchmarks/gpu_check.py --data-dir ../shared/data        # one GPU, under 8 minutes
    python benchmarks/gpu_check.py --device cpu --dataset synthetic --windows 200 \
        --quickstart-seeds 0 --sharing 1 2                          # the CPU smoke run of the tests

It prints one table, a row per check (a check that fails prints its error in its row and the
others still run):

- ``quickstart``: the quickstart search on DEVICE through Ray Tune (trials finished, wall time);
- ``agreement``: a control trial of ``--windows`` test windows on DEVICE, step free of host
  reads (``runtime.sync_free``), against the same trial on the CPU as a user runs it: both MSEs
  and their relative difference, against ``--tolerance``. On the CPU the two must be identical;
- ``step eager`` / ``step graphs``: ms per step of that trial in the steady state, eager and with
  ``torch.compile(mode="reduce-overhead")`` (CUDA graphs on a GPU; on the CPU the same as compile);
- ``sharing N``: N trials of the control on one device through fractional Ray resources
  (``gpu: 1/N``): trials per hour, and the peak device memory of one trial.

Steady-state ms per step is timed between progress reports after the first fifth of the stream
(compilation and graph capture happen before), each report reading the running MSE back, which
waits for the device.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmem.config import deep_merge  # noqa: E402
from hmem.spaces import load_space  # noqa: E402
from hmem.trial import TrialArtefacts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def trial_overrides(args: argparse.Namespace, **runtime) -> dict:
    return {"data": {"max_test_windows": args.windows},
            "runtime": {"device": args.device, **runtime}}


def steady_ms_per_step(run, every: int) -> tuple[float, float]:
    """(MSE, median ms per step after the first fifth of the stream) of an OnlineRun."""
    stamps = [(report.windows_done, report.seconds) for report in run.reports(every)]
    skip = max(1, len(stamps) // 5)
    rates = [1000.0 * (t1 - t0) / (w1 - w0) for (w0, t0), (w1, t1)
             in zip(stamps[skip:], stamps[skip + 1:]) if w1 > w0]
    return run.result().metrics["mse"], statistics.median(rates) if rates else math.nan


def single_trials(args: argparse.Namespace, space, artefacts_cpu) -> list[tuple[str, str]]:
    """The agreement row and the two step-cost rows (eager unless a row says otherwise)."""
    rows = []
    every = max(1, args.windows // 20)
    cpu_cfg = space.trial_config(args.variant, args.dataset, overrides={
        "data": {"max_test_windows": args.windows},
        "runtime": {"device": "cpu", "compile": False}})
    cpu_mse, cpu_ms = steady_ms_per_step(artefacts_cpu.online_run(cpu_cfg), every)
    dev_cfg = space.trial_config(args.variant, args.dataset,
                                 overrides=trial_overrides(args, sync_free=True, compile=False))
    dev_mse, dev_ms = steady_ms_per_step(artefacts_cpu.online_run(dev_cfg), every)
    difference = abs(dev_mse - cpu_mse) / abs(cpu_mse)
    verdict = "ok" if difference <= args.tolerance else f"ABOVE tolerance {args.tolerance:g}"
    rows.append(("agreement", f"{args.device} {dev_mse:.6f} vs cpu {cpu_mse:.6f}: relative "
                              f"difference {difference:.2e} ({verdict})"))
    rows.append(("step eager", f"{dev_ms:.3f} ms/step on {args.device} (cpu {cpu_ms:.3f})"))
    graph_cfg = space.trial_config(args.variant, args.dataset, overrides=trial_overrides(
        args, sync_free=True, compile=True, compile_mode="reduce-overhead"))
    began = time.perf_counter()
    graph_mse, graph_ms = steady_ms_per_step(artefacts_cpu.online_run(graph_cfg), every)
    same = ("the same MSE as eager" if graph_mse == dev_mse
            else f"MSE differs from eager by {abs(graph_mse - dev_mse) / abs(dev_mse):.1e}")
    rows.append(("step graphs", f"{graph_ms:.3f} ms/step (run incl. capture "
                                f"{time.perf_counter() - began:.0f} s; {same})"))
    return rows


def search(args: argparse.Namespace, space_path: Path, name: str, changes: dict,
           out: Path) -> tuple[object, list[dict]]:
    """Launch a modified copy of a space through the normal launcher; return its report and
    the finished trials' metrics."""
    from analysis.loading import load_trials  # noqa: PLC0415
    from tune.launcher import LaunchOptions, launch  # noqa: PLC0415

    space = load_space(space_path)
    data = space.model_dump(mode="json")
    data.update({"name": name, **{k: v for k, v in changes.items() if k != "base"}})
    data["base"] = deep_merge(data.get("base", {}), changes.get("base", {}))
    data.pop("extends", None)
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    report = launch(path, LaunchOptions(storage=str(out), name=name, data_dir=args.data_dir,
                                        cache_dir=args.cache_dir))
    trials = load_trials([report.experiment_path])
    return report, trials[trials["valid"]].to_dict("records")


def gpu_share(n: int, device: str) -> dict:
    return {"cpu": 1, "gpu": 1.0 / n} if device == "cuda" else {"cpu": 1, "gpu": 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--space", default=str(REPO / "search_spaces/control.yaml"))
    parser.add_argument("--variant", default="p2p7p8")
    parser.add_argument("--dataset", default="ETTm1")
    parser.add_argument("--windows", type=int, default=5000, help="test windows per trial")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest relative MSE difference device vs CPU (TF32 and kernel "
                             "order differ on a GPU)")
    parser.add_argument("--sharing", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--quickstart-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--quickstart-variants", nargs="+", default=None,
                        help="the quickstart's variants to run (default: all four)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=None, help="folder of the searches (default: a temp one)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
              "run it on a GPU machine, or with --device cpu for the smoke run", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_check-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rows: list[tuple[str, str]] = []
    began = time.perf_counter()

    def check(name: str, fn) -> None:
        started = time.perf_counter()
        try:
            for row in fn():
                rows.append(row)
        except Exception as err:  # one failing check must not hide the others' figures
            traceback.print_exc()
            rows.append((name, f"FAILED: {type(err).__name__}: {err}"))
        print(f"[gpu_check] {name}: {time.perf_counter() - started:.0f} s", flush=True)

    def quickstart():
        quick = REPO / "search_spaces/quickstart.yaml"
        variants = load_space(quick).variants
        if args.quickstart_variants:
            unknown = sorted(set(args.quickstart_variants) - set(variants))
            if unknown:
                raise ValueError(f"--quickstart-variants: {', '.join(unknown)} not in {quick} "
                                 f"(it has {', '.join(variants)})")
            variants = {name: variants[name] for name in args.quickstart_variants}
        n = len(variants) * len(args.quickstart_seeds)
        report, _ = search(args, quick, "gpu_check_quickstart", {
            "variants": variants, "seeds": args.quickstart_seeds,
            "resources": gpu_share(n, args.device), "base": trial_overrides(args)}, out)
        yield ("quickstart", f"{report.trials - report.errored}/{report.trials} trials finished "
                             f"in {report.seconds:.0f} s on {args.device}")

    def single():
        space = load_space(args.space)
        cfg = space.trial_config(args.variant, args.dataset)
        artefacts = TrialArtefacts.load_or_build(cfg, args.data_dir, args.cache_dir)
        yield from single_trials(args, space, artefacts)

    def sharing():
        for n in args.sharing:
            report, trials = search(args, Path(args.space), f"gpu_check_share{n}", {
                "variants": {args.variant: load_space(args.space).variants[args.variant]},
                "datasets": {args.dataset: load_space(args.space).datasets[args.dataset]},
                "seeds": list(range(n)), "resources": gpu_share(n, args.device),
                "base": deep_merge(trial_overrides(args), {"online": {"warmup": False}})}, out)
            memory = [t["device_memory_mb"] for t in trials
                      if math.isfinite(t.get("device_memory_mb", math.nan))]
            peak = f"{max(memory):.0f} MB" if memory else "n/a (not a GPU)"
            yield (f"sharing {n}", f"{report.trials - report.errored}/{n} finished, "
                                   f"{report.trials_per_hour:.0f} trials/hour, peak device "
                                   f"memory per trial {peak}")

    check("quickstart", quickstart)
    check("agreement", single)
    check("sharing", sharing)

    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"\ngpu_check on {name}, {args.dataset} {args.variant}, {args.windows} test windows "
          f"per trial, {time.perf_counter() - began:.0f} s in all")
    width = max(len(check) for check, _ in rows)
    for check_name, figure in rows:
        print(f"{check_name:<{width}}  {figure}")
    return 1 if any("FAILED" in figure or "ABOVE" in figure for _, figure in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
