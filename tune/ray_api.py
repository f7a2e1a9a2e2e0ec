"""The Ray calls whose shape depends on Ray's version, in one place.

Connecting (the embedded loopback instance or a cluster), creating, restoring and probing Tune
experiments, loading a finished experiment's trials and the job-submission client: a Ray upgrade
that changes any of these is a change here. Building the search itself (``TuneConfig``,
schedulers, Optuna) stays in :mod:`tune.launcher`, and the trainable's reports in
:mod:`tune.trainable`. ``analysis/`` reads experiments only through :func:`load_experiment`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray
import ray.tune
from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient

from tune.loopback import keep_embedded_ray_on_loopback

log = logging.getLogger(__name__)

__all__ = ["AuthenticationError", "JobSubmissionClient", "can_restore", "connect",
           "load_experiment", "new_tuner", "pretrain_cpus", "restore_tuner",
           "unfinished_trials"]


def connect(address: str | None) -> None:
    """Embedded local Ray on 127.0.0.1 when ``address`` is None, else the given cluster."""
    if ray.is_initialized():
        return
    if address is None:
        if not keep_embedded_ray_on_loopback():
            log.warning("Ray was imported before the launch could keep it on 127.0.0.1; the "
                        "embedded instance may use this machine's outward address (see "
                        "tune/loopback.py)")
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                 logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING, **_loopback_node(address))
    log.info("Ray: %s, resources %s", address or "embedded local instance",
             ray.cluster_resources())


def _loopback_node(address: str) -> dict[str, str]:
    """A cluster on a loopback address other than 127.0.0.1 (several nodes on one machine, as in
    the tests): the driver is on the node with that address. Ray would otherwise announce this
    machine's outward address for the driver and find no node there."""
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return {"_node_ip_address": host} if host.startswith("127.") and host != "127.0.0.1" else {}


def pretrain_cpus(tasks: int) -> int:
    """CPUs per pretraining task: a share of the cluster, at most 4, and never more than the
    largest node has (a task asking for more than any node offers would wait forever)."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    largest = max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes()
                   if node["Alive"]), default=1)
    return max(1, min(4, largest, cpus // max(tasks, 1)))


def can_restore(path: str) -> bool:
    """Whether ``path`` holds a Tune experiment that :func:`restore_tuner` can continue."""
    return ray.tune.Tuner.can_restore(path)


def new_tuner(trainable: Any, param_space: dict[str, Any], tune_config: ray.tune.TuneConfig,
              run_config: ray.tune.RunConfig) -> ray.tune.Tuner:
    return ray.tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                          run_config=run_config)


def restore_tuner(path: str, trainable: Any) -> ray.tune.Tuner:
    """The experiment at ``path`` as launched: finished trials kept, the others continued (errored
    ones too, from their last checkpoints)."""
    return ray.tune.Tuner.restore(path, trainable=trainable, resume_errored=True)


def load_experiment(path: str) -> ray.tune.ExperimentAnalysis:
    """A saved experiment's trials (status, config, folder) as Ray recorded them."""
    # Ray warns once per trial that has no results yet (pending); the caller says so instead.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if "://" not in path:  # Ray reads a relative local path as a URI without a scheme
        path = str(Path(path).resolve())
    return ray.tune.ExperimentAnalysis(path)


def unfinished_trials(path: str) -> int:
    """Trials of the experiment saved at ``path`` that neither terminated nor errored.

    Read from the saved experiment state, not from ``Tuner.fit()``'s result grid: after Ctrl+C,
    Ray saves the true statuses and then marks every trial it held in memory TERMINATED,
    pending ones included, so the result grid reports an interrupted search as finished.
    """
    done = (ray.tune.experiment.Trial.TERMINATED, ray.tune.experiment.Trial.ERROR)
    return sum(trial.status not in done for trial in load_experiment(path).trials)
