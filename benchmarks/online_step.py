"""Milliseconds per online step on the ETTm1 shape (C = 7, H = 96, capacity 1000, 4 buckets).

    python benchmarks/online_step.py --data-dir ../shared/data [--variants p2p7p8_frozen p2p7p8]
    python benchmarks/online_step.py --data-dir ../shared/data --space search_spaces/plan.yaml \
        --modes eager --variants p2p7p8 a1_base a2 b1_bilinear b1_mlp b2 b3

Each variant runs in each ``--modes`` of ``runtime.compile`` (compilation happens during the
untimed warm-up). One step is what the online loop does per test window: update on the recent window
(forward, backward, AdamW, memory write) and forecast the current one. Memories are filled first
(the validation warm-up, then test steps until every bucket holds ``capacity`` entries), so the
timed steps pay for full-size retrieval and eviction. One torch thread unless --threads says
otherwise. Prints median, 10th / 90th percentile and mean per variant and mode; ``--profile N``
adds torch.profiler's table of the operators that took the most time over N more steps, and
``--floor`` the pieces of a step timed alone (:func:`print_floor`): what a target below their sum
would need is faster kernels, not a reordered step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hmem.config import deep_merge, parse_set_overrides
from hmem.online.learner import OnlineLearner
from hmem.online.stream import RevealedSeries
from hmem.spaces import load_space
from hmem.trial import TrialArtefacts

#: --modes -> runtime.compile
MODES = {"eager": False, "auto": "auto", "compiled": True}


def time_variant(
    space, variant: str, dataset: str, mode: str, args: argparse.Namespace
) -> list[float]:
    overrides = deep_merge(parse_set_overrides(args.overrides),
                           {"runtime": {"compile": MODES[mode]}})
    cfg = space.trial_config(variant, dataset, overrides=overrides)
    torch.set_num_threads(2)
    artefacts = TrialArtefacts.load_or_build(cfg, args.data_dir, args.cache_dir)
    torch.set_num_threads(args.threads)
    data = artefacts.data
    learner = OnlineLearner(cfg, artefacts.pretrained.model, data.n_vars, data.horizon,
                            encoder=artefacts.encoder.state if artefacts.encoder else None)
    series = RevealedSeries(data, artefacts.base, cfg.chrc if cfg.chrc.enabled else None)
    L, H = data.seq_len, data.horizon
    val = data.segments["val"].window_starts(L, H)
    test = data.segments["test"].window_starts(L, H)

    def step(start: int) -> None:
        series.reveal_until(start + L)
        learner.update(series, start - H)
        learner.predict(series, start)

    for start in val:
        step(start)
    learner.start_test()
    cursor = iter(test)
    capacity = cfg.chrc.memory.capacity
    while learner.bank is not None and min(m.memory.size for m in learner.bank) < capacity:
        step(next(cursor))
    for _ in range(args.warm):
        step(next(cursor))
    times = []
    for _ in range(args.steps):
        start = next(cursor)
        began = time.perf_counter()
        step(start)
        times.append((time.perf_counter() - began) * 1000.0)
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    record_shapes=args.shapes) as prof:
            for _ in range(args.profile):
                step(next(cursor))
        print(f"\n{variant}, {mode}: torch.profiler over "
              f"{args.profile} steps (self CPU time)")
        averages = prof.key_averages(group_by_input_shape=args.shapes)
        print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if args.floor:  # last: its optimiser steps change the learner
        print_floor(learner, series, next(cursor), f"{variant}, {mode}")
    return times


def _median_ms(fn: Callable[[], object], repeats: int = 500) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000.0)
    return statistics.median(times)


def print_floor(learner: OnlineLearner, series: RevealedSeries, start: int, label: str) -> None:
    """The pieces of one step, each timed alone and repeated on one window: a lower bound of
    what a step costs with these kernels, since a repeated piece finds its data in the caches
    and leaves out the memory write, routing, clipping and zeroing. If the pieces already sum
    above a target, no reordering of the step reaches it; only faster kernels would."""
    series.reveal_until(start + series.seq_len)
    update = start - series.horizon
    pieces: dict[str, Callable[[], object]] = {}
    x, marks = series.inputs(update)
    target = series.target(update)
    base = series.base(update) if learner.needs_base_cache else None
    if base is None:
        def backbone_update() -> None:
            out = learner._hot.backbone(x[None], marks[None])[0]
            F.mse_loss(out, target).backward()

        def backbone_forecast() -> None:
            with torch.inference_mode():
                learner._hot.backbone(x[None], marks[None])

        pieces["backbone forward + backward (update)"] = backbone_update
        pieces["backbone forward (forecast)"] = backbone_forecast
        with torch.no_grad():
            base = learner._hot.backbone(x[None], marks[None])[0]
    if learner.bank is not None:
        bucket = series.bucket(update)
        module, pogt = learner.bank[bucket], series.pogt(update)

        def correction_update() -> None:
            prediction, _, _ = learner._hot.update_correction(module, pogt, base, None, None)
            F.mse_loss(prediction, target).backward()

        def correction_forecast() -> None:
            with torch.inference_mode():
                learner._hot.forecast_correction(module, pogt, base, None)

        pieces["CHRC correction forward + backward (update)"] = correction_update
        pieces["CHRC correction forward (forecast)"] = correction_forecast
        part = learner._bucket_parts[bucket]
        part.flat.grad = torch.zeros_like(part.flat)
        pieces[f"AdamW, routed bucket ({part.flat.numel():,} parameters)"] = part.optimiser.step
    if learner._backbone_part is not None:
        part = learner._backbone_part
        part.flat.grad = torch.zeros_like(part.flat)
        pieces[f"AdamW, backbone ({part.flat.numel():,} parameters)"] = part.optimiser.step
    print(f"\n{label}: the step's pieces, each alone on one window (median ms)")
    total = 0.0
    for name, fn in pieces.items():
        ms = _median_ms(fn)
        total += ms
        print(f"  {name:<48} {ms:8.3f}")
    print(f"  {'sum (a lower bound of one step)':<48} {total:8.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="search_spaces/control.yaml")
    parser.add_argument("--dataset", default="ETTm1")
    parser.add_argument("--variants", nargs="+", default=["p2p7p8_frozen", "p2p7p8"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, as hmem run --set")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after timing, profile this many steps and print the top operators")
    parser.add_argument("--shapes", action="store_true",
                        help="with --profile: one row per operator and input shapes")
    parser.add_argument("--floor", action="store_true",
                        help="after timing, time each piece of a step alone (a lower bound; "
                             "this leaves the learner's state changed, so it runs last)")
    parser.add_argument("--rows", type=int, default=20, help="rows of the profiler table")
    parser.add_argument("--modes", nargs="+", default=["eager", "auto"], choices=list(MODES),
                        help="runtime.compile false / auto (the CHRC paths, as a long run "
                             "does) / true (the backbone too)")
    args = parser.parse_args(argv)

    space = load_space(args.space)
    print(f"{args.dataset}, {args.threads} thread(s), {args.steps} timed steps after full memories")
    print(f"{'variant':<16} {'mode':<9} {'median':>8} {'p10':>8} {'p90':>8} {'mean':>8}"
          f"  (ms per step)")
    for variant in args.variants:
        for mode in args.modes:
            times = sorted(time_variant(space, variant, args.dataset, mode, args))
            p10, p90 = times[len(times) // 10], times[(9 * len(times)) // 10]
            print(f"{variant:<16} {mode:<9} {statistics.median(times):8.3f} {p10:8.3f} "
                  f"{p90:8.3f} {statistics.fmean(times):8.3f}", flush=True)


if __name__ == "__main__":
    main()
