"""The ``hmem`` command line.

    hmem run SPACE.yaml --variant NAME --dataset NAME [--seed N] [--set dotted.key=value ...]
             [--data-dir DIR] [--out DIR] [--cache-dir DIR] [--save-forecasts]
    hmem pretrain SPACE.yaml --dataset NAME [--seed N] [--variant NAME] [--data-dir DIR]
    hmem pretrain-encoder SPACE.yaml --dataset NAME [--variant NAME]
    hmem data fetch ETTm1 Weather [--to DIR] [--mirror URL]
    hmem tune launch|submit|token ...     (Ray Tune searches; see tune/)
    hmem report EXP_DIR [EXP_DIR ...] --out FILE.html|FILE.md
    hmem campaign SPACE.yaml [--address ADDR] [--storage DIR] [--resume]

Errors the user can fix are printed as one message (file, key or row, and what to do) with exit
status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from hmem.errors import HmemError

log = logging.getLogger("hmem")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", help="search-space YAML, e.g. search_spaces/control.yaml")
    parser.add_argument("--dataset", required=True,
                        help="ETTm1, Weather, synthetic (as the space defines them) or a "
                        ".csv/.csv.gz path")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the benchmark files (default: $HMEM_DATA_DIR)")
    parser.add_argument("--cache-dir", default=None,
                        help="pretrained-artefact cache (default: $HMEM_CACHE_DIR or "
                        "~/.cache/hmem)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set online.lr=3e-5 (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmem", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one trial in this process (no Ray)")
    _common(run)
    run.add_argument("--variant", required=True, help="a variant of the space, e.g. p2p7p8")
    run.add_argument("--seed", type=int, default=None, help="default: the space's first seed")
    run.add_argument("--out", default=None,
                     help="results folder (default: results/runs/SPACE/VARIANT-DATASET-sSEED)")
    run.add_argument("--progress-every", type=int, default=5000, metavar="N",
                     help="log the running test MSE every N windows (default 5000)")
    run.add_argument("--save-forecasts", action="store_true",
                     help="also write OUT/forecasts.npz: start_row [N] and forecast [N, H, C] of "
                     "every scored test window (scaled values, as the metrics use)")
    run.set_defaults(handler=_cmd_run)

    pretrain = commands.add_parser("pretrain", help="pretrain (or load) a backbone and its cache")
    _common(pretrain)
    pretrain.add_argument("--seed", type=int, default=None,
                          help="pretraining seed (default: the config's pretrain.seed)")
    pretrain.add_argument("--variant", default=None,
                          help="take the backbone config from this variant (default: the first)")
    pretrain.set_defaults(handler=_cmd_pretrain)

    encoder = commands.add_parser(
        "pretrain-encoder", help="B2: pretrain (or load) the contrastive POGT encoder")
    _common(encoder)
    encoder.add_argument("--variant", default=None,
                         help="a variant with chrc.contrastive on (default: the first such)")
    encoder.add_argument("--seed", type=int, default=None,
                         help="contrastive seed (default: chrc.contrastive.seed)")
    encoder.set_defaults(handler=_cmd_pretrain_encoder)

    data = commands.add_parser("data", help="the public benchmark files")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser(
        "fetch", help="download the benchmark files, verify their SHA-256, place them atomically")
    fetch.add_argument("datasets", nargs="+", metavar="NAME", help="ETTm1, Weather")
    fetch.add_argument("--to", default=None,
                       help="folder to write to (default: $HMEM_DATA_DIR, else ./data)")
    fetch.add_argument("--mirror", default=None, metavar="URL",
                       help="fetch URL/<file name> instead of the canonical public location")
    fetch.add_argument("--retries", type=int, default=3, help="attempts per file (default 3)")
    fetch.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    fetch.set_defaults(handler=_cmd_data_fetch)

    tune = commands.add_parser("tune", help="run a search space on Ray Tune")
    tune_commands = tune.add_subparsers(dest="tune_command", required=True)
    launch = tune_commands.add_parser("launch", help="run the search (local Ray by default)")
    _tune_common(launch)
    launch.add_argument("--address", default=None,
                        help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: an "
                        "embedded local instance on 127.0.0.1)")
    launch.add_argument("--resume", action="store_true",
                        help="continue the interrupted experiment STORAGE/NAME")
    launch.add_argument("--dry-run", action="store_true",
                        help="print the trials and the pretraining runs; start nothing")
    launch.set_defaults(handler=_cmd_tune_launch)

    submit = tune_commands.add_parser("submit", help="submit the launch as a Ray job")
    _tune_common(submit)
    submit.add_argument("--address", required=True,
                        help="the cluster's job API, e.g. http://127.0.0.1:8265")
    submit.add_argument("--pip", action="store_true",
                        help="install requirements.txt into the job's environment")
    submit.add_argument("--wait", action="store_true",
                        help="follow the job's logs until it ends; exit 0 only if it succeeded")
    submit.set_defaults(handler=_cmd_tune_submit)

    token = tune_commands.add_parser(
        "token", help="write a new Ray auth token file for a cluster (RAY_AUTH_TOKEN_PATH)")
    token.add_argument("--out", default="docker/secrets/ray_auth_token",
                       help="where to write it, mode 0600 (default: %(default)s, ignored by git)")
    token.add_argument("--force", action="store_true", help="replace an existing token file")
    token.set_defaults(handler=_cmd_tune_token)

    report = commands.add_parser(
        "report", help="verdicts, tables and figures of one or more experiments (HTML or MD)")
    report.add_argument("experiments", nargs="+", metavar="EXP_DIR",
                        help="experiment folders (STORAGE/NAME), e.g. results/tune/plan, or "
                             "a campaign's folder (results/campaigns/plan): every stage it has "
                             "started, its decisions, and whether it has finished")
    report.add_argument("--out", required=True, help="report file, .html or .md")
    report.add_argument("--space", default=None,
                        help="the search space the experiments come from: the report then costs "
                        "its exhaustive grid against the trial-hours used")
    report.add_argument("--tuning", nargs="+", default=[], metavar="EXP_DIR",
                        help="searches that tuned a configuration on validation MSE "
                             "(online.test_stream: false): their best trials and what was "
                             "selected, in a section of their own")
    _rule_options(report)
    report.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    report.set_defaults(handler=_cmd_report)

    replay = commands.add_parser(
        "replay-stopping", help="replay futility stopping over finished experiments: where it "
        "would have stopped each variant, and whether any verdict would change")
    replay.add_argument("experiments", nargs="+", metavar="EXP_DIR",
                        help="experiment folders holding the variants and their controls")
    replay.add_argument("--min-share", type=float, default=0.25,
                        help="no look before this share of the stream (default: %(default)s)")
    replay.add_argument("--look-every", type=float, default=0.05,
                        help="then one look per this share (default: %(default)s)")
    replay.add_argument("--alpha", type=float, default=0.05,
                        help="spent over all looks (default: %(default)s)")
    _rule_options(replay)
    replay.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    replay.set_defaults(handler=_cmd_replay_stopping)

    campaign = commands.add_parser(
        "campaign", help="run the plan's stages in order on Ray, the rules deciding between them")
    campaign.add_argument("space", help="search space holding every stage's variants, e.g. "
                          "search_spaces/plan.yaml")
    campaign.add_argument("--address", default=None,
                          help="Ray cluster (default: an embedded local instance on 127.0.0.1)")
    campaign.add_argument("--storage", default=None,
                          help="folder that holds the campaign's folder: its stages, log and "
                          "report (default: results/campaigns)")
    campaign.add_argument("--name", default=None, help="campaign name (default: the space's)")
    campaign.add_argument("--resume", action="store_true",
                          help="continue an interrupted campaign; finished stages are kept")
    campaign.add_argument("--data-dir", default=None,
                          help="folder with the benchmark files (default: $HMEM_DATA_DIR)")
    campaign.add_argument("--cache-dir", default=None, help="pretrained-artefact cache")
    campaign.add_argument("--extra-seeds", type=int, default=2,
                          help="seeds added to a best variant that needs reproduction")
    campaign.add_argument("--control-seeds", type=int, default=3,
                          help="seeds 0..N-1 of every control (the noise floor needs 3; "
                          "default: %(default)s)")
    campaign.add_argument("--no-stopping", action="store_true",
                          help="run every variant to the end (default: futility stopping "
                          "against S0's controls, see the space's stopping section)")
    _rule_options(campaign)
    campaign.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    campaign.set_defaults(handler=_cmd_campaign)
    return parser


def _tune_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", help="search-space YAML, e.g. search_spaces/quickstart.yaml")
    parser.add_argument("--storage", default=None,
                        help="experiment storage, a path or URI (default: the space's storage "
                        "or results/tune)")
    parser.add_argument("--name", default=None, help="experiment name (default: the space's)")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the benchmark files (default: $HMEM_DATA_DIR)")
    parser.add_argument("--cache-dir", default=None,
                        help="pretrained-artefact cache (default: $HMEM_CACHE_DIR or "
                        "~/.cache/hmem)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value in every trial")
    parser.add_argument("--variants", type=_names, default=None, metavar="A,B",
                        help="run only these variants of the space (default: all)")
    parser.add_argument("--datasets", type=_names, default=None, metavar="A,B",
                        help="run only these datasets of the space (default: all)")
    parser.add_argument("--seeds", type=_seeds, default=None, metavar="0,1",
                        help="run these seeds instead of the space's")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names, e.g. a1_base,b3")
    return names


def _seeds(text: str) -> list[int]:
    try:
        return [int(seed) for seed in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def _selection(args: argparse.Namespace):
    from tune.launcher import Selection

    return Selection(variants=args.variants, datasets=args.datasets, seeds=args.seeds)


def _rule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-gain", type=float, default=None,
                        help="smallest gain that counts (default 0.005, the plan's 0.5 %%)")
    parser.add_argument("--threshold", action="append", default=[], metavar="DATASET=MSE",
                        help="success threshold of a dataset (defaults: ETTm1=0.700, "
                        "Weather=1.45); repeatable")


def _rules(args: argparse.Namespace):
    from analysis.rules import Rules
    from hmem.errors import ConfigError

    rules = Rules()
    thresholds = dict(rules.success_mse)
    for item in args.threshold:
        name, _, value = item.partition("=")
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise ConfigError(f"--threshold {item}: expected DATASET=MSE, e.g. ETTm1=0.7") from None
    min_gain = rules.min_gain if args.min_gain is None else args.min_gain
    if not 0 <= min_gain < 1:
        raise ConfigError(f"--min-gain {min_gain}: expected a fraction in [0, 1), e.g. 0.005")
    return Rules(min_gain=min_gain, success_mse=thresholds)


def _overrides(args: argparse.Namespace) -> dict:
    from hmem.config import parse_set_overrides

    return parse_set_overrides(args.overrides)


def _log_progress(progress) -> None:
    log.info("test stream: %d/%d windows, running MSE %.4f over %d scored, %.2f ms/step",
             progress.windows_done, progress.windows_total, progress.running_mse,
             progress.scored, progress.ms_per_step)


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from hmem.data.fetch import fetch
    from hmem.data.loading import resolve_data_dir

    folder = Path(args.to) if args.to else (resolve_data_dir(None) or Path("data"))
    fetch(args.datasets, folder, mirror=args.mirror, retries=args.retries)
    print(f"data directory: {folder.resolve()}\n  use --data-dir {folder.resolve()} "
          f"(or export HMEM_DATA_DIR={folder.resolve()})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from hmem.spaces import Cell, load_space
    from hmem.trial import TrialArtefacts, run_trial_and_save, write_config

    space = load_space(args.space)
    cfg = space.trial_config(args.variant, args.dataset, args.seed, _overrides(args))
    cell = Cell(args.variant, args.dataset, cfg.seed)
    out = Path(args.out or Path("results") / "runs" / space.name / cell.label())
    write_config(out, cfg)
    torch.set_num_threads(cfg.runtime.pretrain_thread_count)
    artefacts = TrialArtefacts.load_or_build(cfg, args.data_dir, args.cache_dir)
    torch.set_num_threads(cfg.runtime.threads)
    result = run_trial_and_save(cfg, space.name, cell, out, artefacts, progress=_log_progress,
                                progress_every=args.progress_every,
                                save_forecasts=args.save_forecasts)
    m = result.metrics
    print(
        f"{cell.label()} [{m['regime']}]: MSE {m['mse']:.4f}  MAE {m['mae']:.4f}  "
        f"RMSE {m['rmse']:.4f} | {m['steps']} steps, {m['ms_per_step']:.2f} ms/step, "
        f"{m['seconds_total']:.1f} s online (+{m['pretrain_seconds']:.1f} s pretraining"
        f"{', cached' if m['pretrain_cached'] else ''}) -> {out}"
    )
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import torch

    from hmem.spaces import load_space
    from hmem.trial import TrialArtefacts

    space = load_space(args.space)
    overrides = _overrides(args)
    if args.seed is not None:
        overrides.setdefault("pretrain", {})["seed"] = args.seed
    variant = args.variant or next(iter(space.variants))
    cfg = space.trial_config(variant, args.dataset, None, overrides)
    torch.set_num_threads(cfg.runtime.pretrain_thread_count)
    started = time.perf_counter()
    artefacts = TrialArtefacts.load_or_build(cfg, args.data_dir, args.cache_dir,
                                             base_forecasts=True)
    pretrained, base, meta = artefacts.pretrained, artefacts.base, artefacts.pretrained.meta
    print(
        f"backbone {pretrained.key} ({args.dataset}): "
        f"{'loaded from cache' if pretrained.loaded_from_cache else 'pretrained'}; best validation "
        f"MSE {meta['best_val_mse']:.4f} at epoch {meta['best_epoch']} of {meta['epochs_run']}, "
        f"pretraining took {meta['pretrain_seconds']:.1f} s; base forecasts for "
        f"{len(base.forecasts)} windows; {time.perf_counter() - started:.1f} s in all "
        f"-> {pretrained.directory}"
    )
    return 0


def _cmd_pretrain_encoder(args: argparse.Namespace) -> int:
    import torch

    from hmem.errors import ConfigError
    from hmem.spaces import load_space
    from hmem.trial import TrialArtefacts

    space = load_space(args.space)
    overrides = _overrides(args)
    if args.seed is not None:
        overrides.setdefault("chrc", {}).setdefault("contrastive", {})["seed"] = args.seed
    candidates = [args.variant] if args.variant else list(space.variants)
    configs = [space.trial_config(v, args.dataset, None, overrides) for v in candidates]
    chosen = [c for c in configs if c.uses_pretrained_encoder]
    if not chosen:
        raise ConfigError(f"{space.source}: no variant{' ' + args.variant if args.variant else ''}"
                          f" has chrc.contrastive.enabled: true; there is nothing to pretrain")
    cfg = chosen[0]
    torch.set_num_threads(cfg.runtime.pretrain_thread_count)
    artefacts = TrialArtefacts.load_or_build(cfg, args.data_dir, args.cache_dir,
                                             base_forecasts=False)
    pretrained, encoder = artefacts.pretrained, artefacts.encoder
    meta = encoder.meta
    print(f"contrastive encoder {encoder.key} ({args.dataset}, backbone {pretrained.key}): "
          f"{'loaded from cache' if encoder.loaded_from_cache else 'pretrained'}; "
          f"{meta['windows']} windows, InfoNCE {meta['history'][0]['info_nce']:.3f} -> "
          f"{meta['history'][-1]['info_nce']:.3f} (chance {meta['chance_info_nce']:.3f}); "
          f"pretraining took {meta['pretrain_seconds']:.1f} s")
    return 0


def _keep_ray_local(args: argparse.Namespace) -> None:
    """A command that starts its own Ray (no ``--address``) keeps it on 127.0.0.1: the switch
    must be set before anything imports Ray (tune/loopback.py)."""
    if args.address is None:
        from tune.loopback import keep_embedded_ray_on_loopback

        keep_embedded_ray_on_loopback()


def _cmd_tune_launch(args: argparse.Namespace) -> int:
    _keep_ray_local(args)
    from tune.launcher import LaunchOptions, format_report, launch

    options = LaunchOptions(address=args.address, storage=args.storage, name=args.name,
                            resume=args.resume, dry_run=args.dry_run, data_dir=args.data_dir,
                            cache_dir=args.cache_dir, overrides=_overrides(args),
                            selection=_selection(args))
    report = launch(args.space, options)
    if report is not None:
        print(format_report(report))
        return 1 if report.errored or report.unfinished else 0
    return 0


def _cmd_tune_submit(args: argparse.Namespace) -> int:
    from tune.submit import submit, wait

    forwarded = []
    for flag in ("storage", "name", "data_dir", "cache_dir"):
        value = getattr(args, flag)
        if value is not None:
            forwarded += [f"--{flag.replace('_', '-')}", value]
    for item in args.overrides:
        forwarded += ["--set", item]
    for flag in ("variants", "datasets", "seeds"):
        value = getattr(args, flag)
        if value is not None:
            forwarded += [f"--{flag}", ",".join(map(str, value))]
    job = submit(args.address, args.space, forwarded, pip=args.pip)
    print(f"submitted job {job}\n  follow its logs: ray job logs --follow {job} "
          f"--address {args.address}\n  status:          ray job status {job} "
          f"--address {args.address}", flush=True)
    if not args.wait:
        return 0
    status = wait(args.address, job)
    print(f"job {job} {status}")
    return 0 if status == "SUCCEEDED" else 1


def _cmd_tune_token(args: argparse.Namespace) -> int:
    from tune.submit import write_token

    path = write_token(Path(args.out), force=args.force)
    print(f"wrote a new Ray auth token to {path} (mode 0600; keep it out of version control).\n"
          f"  cluster nodes and clients: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={path}\n"
          f"  Kubernetes: kubectl create secret generic hmem-ray-auth "
          f"--from-file=auth_token={path}")
    return 0


def _cmd_replay_stopping(args: argparse.Namespace) -> int:
    from analysis.futility import FutilityRule, replay_experiments

    rules = _rules(args)
    rule = FutilityRule(rules.min_gain, args.min_share, args.look_every, args.alpha)
    runs, changes = replay_experiments(args.experiments, rule, rules)
    if runs.empty:
        print("no finished variant run with a finished control of the same dataset, seed and "
              "backbone: nothing to replay")
        return 0
    shown = runs.assign(
        stopped_at=[f"{int(s)}/{w}" if s == s else "runs on" for s, w
                    in zip(runs["stopped_at"], runs["windows"])],
        **{c: [f"{100 * v:+.3f}%" if v == v else "" for v in runs[c]]
           for c in ("gain_at_stop", "bound", "final_gain")},
        saved=[f"{100 * v:.0f}%" for v in runs["saved"]])
    print(shown[["variant", "dataset", "seed", "stopped_at", "gain_at_stop", "bound",
                 "final_gain", "saved"]].to_string(index=False))
    stopped = runs["stopped_at"].notna()
    wrong = stopped & (runs["final_gain"] >= rule.min_gain)
    saved = float((runs["saved"] * runs["windows"]).sum() / runs["windows"].sum())
    print(f"\n{int(stopped.sum())} of {len(runs)} variant runs stopped, "
          f"{int(wrong.sum())} of them wrongly (whole-stream gain >= "
          f"{100 * rule.min_gain:g}%); {100 * saved:.1f}% of these runs' test windows saved")
    differ = changes[changes["differs"]]
    above = stopped & (runs["final_gain"] > runs["bound"])
    print(f"the whole-stream gain ended above the bound in {int(above.sum())} of "
          f"{int(stopped.sum())} stopped runs (the bound predicts the windows to come from those "
          f"seen; a variant that keeps learning drifts past it)")
    print(f"verdicts: {len(differ)} of {len(changes)} would change")
    if not differ.empty:
        print(differ.to_string(index=False))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import display_table, write_report
    from hmem.spaces import load_space

    space = load_space(args.space) if args.space else None
    command = shlex.join(["hmem", *args.argv])  # listed in the report, to reproduce it
    analysis = write_report(args.experiments, args.out, _rules(args), space, args.tuning,
                            command)
    print(display_table(analysis.verdicts, ["direction", "dataset", "best_variant", "mse",
                                            "gain", "gain_vs_baseline", "verdict"])
          .to_string(index=False))
    print(f"report: {args.out}")
    return 0


def _cmd_campaign(args: argparse.Namespace) -> int:
    _keep_ray_local(args)
    from hmem.spaces import CAMPAIGN_STORAGE
    from tune.campaign import CampaignOptions, run_campaign

    options = CampaignOptions(address=args.address, storage=args.storage or CAMPAIGN_STORAGE,
                              name=args.name,
                              resume=args.resume, data_dir=args.data_dir,
                              cache_dir=args.cache_dir, extra_seeds=args.extra_seeds,
                              stopping=not args.no_stopping,
                              control_seeds=args.control_seeds,
                              rules=_rules(args))
    print(f"report: {run_campaign(args.space, options)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.handler(args)
    except HmemError as err:
        print(f"hmem {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
