"""``hmem tune launch``: a search space as a Ray Tune experiment.

    launch(space, LaunchOptions(...))

1. Resolve every trial's config from the space (nothing starts if one is invalid).
2. Connect to Ray: an embedded local instance bound to 127.0.0.1 by default, or the cluster at
   ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``).
3. Pretrain each distinct backbone once, as Ray tasks, and ship it through the object store.
4. Run the trials with Ray Tune's own Tuner: grid or OptunaSearch, optional ASHA, per-trial
   resources, checkpoints, retries from the last checkpoint (``max_failures``).
5. Print the best trial per dataset and where the results are.

``--resume`` continues an interrupted experiment with ``Tuner.restore``: finished trials are kept,
unfinished ones continue from their last checkpoint, with the search space saved at launch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from hmem.artefacts import resolve_cache_dir
from hmem.config import TrialConfig
from hmem.data.loading import resolve_data_dir
from hmem.errors import ConfigError, HmemError
from hmem.records import LAUNCH_RECORD, LaunchRecord
from hmem.spaces import DEFAULT_STORAGE, Distribution, SearchSpace, load_space
from tune.artefacts import BackbonePlan, plan_backbones, ship_backbones
from tune.futility import FutilityStopper, control_losses
from tune.naming import trial_dirname, trial_name  # older experiments' state names them here
from tune.ray_api import (
    can_restore,
    connect,
    new_tuner,
    pretrain_cpus,
    restore_tuner,
    unfinished_trials,
)
from tune.trainable import TrialContext, hmem_trainable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """Part of a space to run (``--variants``, ``--datasets``, ``--seeds``); None keeps all."""

    variants: list[str] | None = None
    datasets: list[str] | None = None
    seeds: list[int] | None = None


@dataclass(frozen=True)
class LaunchOptions:
    address: str | None = None
    storage: str | None = None
    name: str | None = None
    resume: bool = False
    dry_run: bool = False
    data_dir: str | None = None
    cache_dir: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    selection: Selection = field(default_factory=Selection)


@dataclass
class LaunchReport:
    experiment_path: str
    trials: int
    errored: int
    seconds: float
    best: list[dict[str, Any]]
    backbones: int
    metric: str = "mse"  # what "best" was judged on (the search's metric)
    unfinished: int = 0  # trials neither terminated nor errored: the run was interrupted

    @property
    def trials_per_hour(self) -> float:
        return 3600.0 * self.trials / self.seconds if self.seconds else float("nan")


# ----------------------------------------------------------------------------- planning


def trial_configs(space: SearchSpace, overrides: dict[str, Any]) -> dict[str, TrialConfig]:
    """Label -> resolved config of every cell (an optuna search has one cell)."""
    cells = space.cells() if space.search.kind == "grid" else space.cells()[:1]
    return {c.label(): space.trial_config(c.variant, c.dataset, c.seed, overrides) for c in cells}


def planned_trials(space: SearchSpace, configs: dict[str, TrialConfig]) -> int:
    """How many trials the search runs when it ends normally: a grid one per cell, Optuna
    ``num_samples``. (Tune creates them lazily, so an interrupted search may hold fewer.)"""
    return len(configs) if space.search.kind == "grid" else space.search.num_samples


def _experiment_path(storage: str, name: str) -> str:
    return storage.rstrip("/") + "/" + name


def _absolute_storage(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def dry_run_table(space: SearchSpace, configs: dict[str, TrialConfig],
                  plans: dict[str, BackbonePlan]) -> str:
    key_of = {label: key for key, plan in plans.items() for label in plan.trials}
    lines = [f"{'trial':<36} {'variant':<16} {'dataset':<12} {'seed':>4}  {'cpu':>4} {'gpu':>4}"
             f"  backbone"]
    for cell in (space.cells() if space.search.kind == "grid" else space.cells()[:1]):
        label = cell.label()
        lines.append(f"{label:<36} {cell.variant:<16} {cell.dataset:<12} {cell.seed:>4}  "
                     f"{space.resources.cpu:>4g} {space.resources.gpu:>4g}  {key_of[label]}")
    count = planned_trials(space, configs)
    encoders = sum(len(plan.encoders) for plan in plans.values())
    lines.append(f"{count} trial(s); {len(plans)} pretraining run(s), one per distinct backbone"
                 + (f"; {encoders} contrastive encoder pretraining(s)" if encoders else ""))
    if space.search.kind == "optuna":
        ranges = ", ".join(f"{k}: {d.type}" for k, d in space.search.params.items())
        lines.append(f"optuna samples {space.search.num_samples} trials over {ranges}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- Ray


def _domain(distribution: Distribution):
    if distribution.type == "uniform":
        return ray.tune.uniform(distribution.low, distribution.high)
    if distribution.type == "loguniform":
        return ray.tune.loguniform(distribution.low, distribution.high)
    if distribution.type == "int":
        return ray.tune.randint(int(distribution.low), int(distribution.high) + 1)
    return ray.tune.choice(distribution.values)


def _param_space(space: SearchSpace) -> dict[str, Any]:
    cells = [asdict(cell) for cell in space.cells()]
    if space.search.kind == "grid":
        return {"cell": ray.tune.grid_search(cells)}
    return {"cell": cells[0],
            "sampled": {key: _domain(d) for key, d in space.search.params.items()}}


def _tune_config(space: SearchSpace) -> ray.tune.TuneConfig:
    search = space.search
    search_alg, concurrency = None, space.max_concurrent
    if search.kind == "optuna":
        search_alg = OptunaSearch(seed=search.seed)
        if space.max_concurrent:
            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=space.max_concurrent)
            concurrency = None
    scheduler = None
    if space.scheduler is not None:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=space.scheduler.max_t,
            grace_period=space.scheduler.grace_period,
            reduction_factor=space.scheduler.reduction_factor,
        )
    return ray.tune.TuneConfig(
        metric=search.metric,
        mode=search.mode,
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=search.num_samples,
        max_concurrent_trials=concurrency,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_dirname,
        # A new worker process pays ~6 s importing torch, Ray Tune and SciPy before its first
        # window; a finished trial's worker takes the next trial instead (Ray resets it, and
        # moves it into the new trial's folder). A trial sets its own seeds and threads.
        reuse_actors=True,
    )


def _run_config(space: SearchSpace, storage: str, name: str) -> ray.tune.RunConfig:
    # Keeping one checkpoint forces an experiment snapshot at each; Ray warns about that, and
    # documents this variable to silence it. Keeping more would store more large checkpoints.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    return ray.tune.RunConfig(
        name=name,
        storage_path=storage,
        failure_config=ray.tune.FailureConfig(max_failures=space.max_failures),
        checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1),
        sync_config=ray.tune.SyncConfig(sync_artifacts=True),
        stop=FutilityStopper() if space.stopping.enabled else None,
        verbose=1,
    )


def _write_record(exp_path: str, record: LaunchRecord) -> None:
    fs, path = pyarrow.fs.FileSystem.from_uri(exp_path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{LAUNCH_RECORD}") as out:
        out.write(record.to_json().encode())


def _read_record(exp_path: str) -> LaunchRecord | None:
    fs, path = pyarrow.fs.FileSystem.from_uri(exp_path)
    target = f"{path}/{LAUNCH_RECORD}"
    if fs.get_file_info(target).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as handle:
        return LaunchRecord.read(handle.read().decode(), f"{exp_path}/{LAUNCH_RECORD}")


# ----------------------------------------------------------------------------- launch


def launch(space_path: str | os.PathLike, options: LaunchOptions) -> LaunchReport | None:
    chosen = options.selection
    if options.resume and chosen != Selection():
        raise ConfigError("--variants, --datasets and --seeds choose what a new experiment runs; "
                          "--resume continues the saved one as launched: drop them, or launch "
                          "the selection under a new --name")
    space = load_space(space_path).select(chosen.variants, chosen.datasets, chosen.seeds)
    storage = _absolute_storage(options.storage or space.storage or DEFAULT_STORAGE)
    name = options.name or space.name
    exp_path = _experiment_path(storage, name)
    data_dir = resolve_data_dir(options.data_dir)
    data_dir = str(data_dir.resolve()) if data_dir is not None else None
    cache_dir = str(resolve_cache_dir(options.cache_dir).resolve())
    overrides = options.overrides

    if options.resume and not options.dry_run:
        record = _read_record(exp_path) if Path(exp_path).exists() or "://" in exp_path else None
        if record is None or not can_restore(exp_path):
            raise HmemError(f"nothing to resume at {exp_path}: launch it first (without --resume)")
        space = SearchSpace.model_validate(record.space)
        space._source = record.space_source
        if options.data_dir is None:
            data_dir = record.data_dir
        overrides = record.overrides
        log.info("resuming %s with the search space saved at launch", exp_path)

    configs = trial_configs(space, overrides)
    plans = plan_backbones(configs, data_dir,
                           may_freeze=space.may_sample("backbone.online_lr_scale", 0.0))
    if options.dry_run:
        print(dry_run_table(space, configs, plans))
        return None
    if not options.resume and Path(exp_path).exists() and can_restore(exp_path):
        raise ConfigError(f"{exp_path} already holds an experiment: pass --resume to continue "
                          f"it, or --name NAME for a new one")

    connect(options.address)
    started = time.perf_counter()
    training = sum(not plan.cached(cache_dir) for plan in plans.values())
    refs = ship_backbones(plans, data_dir, cache_dir, cpus_per_task=pretrain_cpus(training))
    controls = control_losses(space.stopping.controls) if space.stopping.enabled else {}
    context = TrialContext(space.model_dump(), space.source, data_dir, cache_dir, refs, overrides,
                           controls)
    resources = {"cpu": space.resources.cpu, "gpu": space.resources.gpu}
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(hmem_trainable, context=context), resources
    )
    if options.resume:
        tuner = restore_tuner(exp_path, trainable)
    else:
        _write_record(exp_path, LaunchRecord.new({
            "space": space.model_dump(), "space_source": space.source, "data_dir": data_dir,
            "overrides": overrides}))
        tuner = new_tuner(trainable, _param_space(space), _tune_config(space),
                          _run_config(space, storage, name))
    results = tuner.fit()
    return _summarise(results, exp_path, time.perf_counter() - started, len(plans), space,
                      planned=planned_trials(space, configs))


def _summarise(results: ray.tune.ResultGrid, exp_path: str, seconds: float, backbones: int,
               space: SearchSpace, planned: int) -> LaunchReport:
    metric, sign = space.search.metric, 1 if space.search.mode == "min" else -1
    # Trials that streamed to the end (ASHA-stopped ones end early, without the final metrics).
    finished = [r for r in results if r.error is None and "regime" in r.metrics]
    best: dict[str, ray.tune.Result] = {}
    for result in finished:
        dataset, value = result.metrics["dataset"], result.metrics[metric]
        if dataset not in best or sign * value < sign * best[dataset].metrics[metric]:
            best[dataset] = result
    rows = [{"dataset": d, "variant": r.metrics["variant"], "seed": r.metrics["seed"],
             metric: r.metrics[metric], "regime": r.metrics["regime"],
             "sampled": (r.config or {}).get("sampled", {})} for d, r in best.items()]
    # pending or running when interrupted, or never created (Tune creates trials lazily)
    created, unfinished = len(results), unfinished_trials(exp_path)
    unfinished += max(planned - created, 0)
    return LaunchReport(exp_path, created, len(results.errors), seconds, rows, backbones,
                        metric, unfinished)


def format_report(report: LaunchReport) -> str:
    metric = report.metric
    lines = [f"{report.trials} trial(s), {report.errored} errored, in {report.seconds:.0f} s "
             f"({report.trials_per_hour:.1f} trials/hour); {report.backbones} backbone(s) "
             f"pretrained or loaded once"]
    for row in report.best:
        lines.append(f"best on {row['dataset']}: {row['variant']} seed {row['seed']} "
                     f"{metric} {row[metric]:.4f} [{row['regime']}]")
        if row.get("sampled"):  # an Optuna search: what to pass to run it again
            lines.append("  " + " ".join(f"--set {key}={value!r}"
                                         for key, value in row["sampled"].items()))
    if report.unfinished:
        lines.append(f"interrupted: {report.unfinished} trial(s) not finished; continue with "
                     "the same command and --resume")
    lines.append(f"results: {report.experiment_path}")
    lines.append(f"TensorBoard: tensorboard --logdir {report.experiment_path}")
    return "\n".join(lines)

