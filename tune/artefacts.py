"""Pretrained backbones, computed once per search and shipped to trials through the object store.

Before any trial starts, the launcher finds the distinct backbone keys of the search (dataset
content, split, backbone and pretraining config), pretrains each one as a Ray task (in parallel,
on any node, reusing the on-disk cache of that node when it has the key) and keeps the results in
Ray's object store: weights, metadata and, when a trial of that key keeps its backbone frozen,
the base-forecast cache. Trials on any node read them from there, so no trial pretrains and a
48-trial search pretrains each backbone exactly once. Large arrays travel as numpy, which the
object store hands to every trial on a node without copying.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from hmem.artefacts import BaseForecasts, Pretrained, backbone_key
from hmem.backbones import load_backbone
from hmem.config import TrialConfig
from hmem.data.splits import PreparedData, prepare
from hmem.trial import TrialArtefacts
from hmem.variants.contrastive import PretrainedEncoder, encoder_key, load_or_pretrain_encoder

log = logging.getLogger(__name__)


@dataclass
class BackbonePlan:
    """One distinct backbone of a search and the trials that use it."""

    key: str
    config: TrialConfig  # the config of its first trial (data, backbone, pretrain)
    trials: list[str] = field(default_factory=list)
    needs_base_forecasts: bool = False
    encoders: dict[str, TrialConfig] = field(default_factory=dict)  # B2 encoders built on it

    def cached(self, cache_dir: str | os.PathLike) -> bool:
        """Whether everything this plan builds is in the cache already (its task only loads):
        the CPUs then go to the plans that train. A guess from file names; loading verifies."""
        root = Path(cache_dir)
        backbone = root / "backbones" / self.key
        needed = [backbone / "weights.pt", *([backbone / "base_forecasts.pt"]
                                             if self.needs_base_forecasts else []),
                  *(root / "encoders" / key / "weights.pt" for key in self.encoders)]
        return all(path.exists() for path in needed)


def plan_backbones(
    configs: dict[str, TrialConfig], data_dir: str | None, *, may_freeze: bool = False
) -> dict[str, BackbonePlan]:
    """Group trials (label -> config) by backbone key; the data is read once per data config.

    ``may_freeze``: a search samples ``backbone.online_lr_scale`` from a range that includes 0,
    so any of its trials may run a frozen backbone and need the base forecasts."""
    prepared: dict[str, PreparedData] = {}
    plans: dict[str, BackbonePlan] = {}
    for label, cfg in configs.items():
        data_id = cfg.data.model_dump_json()
        if data_id not in prepared:
            prepared[data_id] = prepare(cfg.data, data_dir)
        key = backbone_key(cfg, prepared[data_id])
        plan = plans.setdefault(key, BackbonePlan(key, cfg))
        plan.trials.append(label)
        plan.needs_base_forecasts |= cfg.needs_base_forecasts or (
            may_freeze and cfg.runtime.base_cache)
        if cfg.uses_pretrained_encoder:
            plan.encoders.setdefault(encoder_key(cfg, key), cfg)
    return plans


def _build(config: dict[str, Any], data_dir: str | None, cache_dir: str, needs_base: bool,
           threads: int, encoders: list[dict[str, Any]]) -> dict[str, Any]:
    """Ray task: pretrain (or load) one backbone and, if asked, its base forecasts and the B2
    encoders built on it."""
    cfg = TrialConfig.model_validate(config)
    torch.set_num_threads(threads)
    artefacts = TrialArtefacts.load_or_build(cfg, data_dir, cache_dir, base_forecasts=needs_base)
    data, pretrained = artefacts.data, artefacts.pretrained
    shipped: dict[str, Any] = {
        "key": pretrained.key,
        "meta": pretrained.meta,
        "loaded_from_cache": pretrained.loaded_from_cache,
        "state": {name: t.numpy() for name, t in pretrained.model.state_dict().items()},
        "node": ray.get_runtime_context().get_node_id(),
    }
    if artefacts.base is not None:
        shipped["base_first_start"] = artefacts.base.first_start
        shipped["base_forecasts"] = np.ascontiguousarray(artefacts.base.forecasts.numpy())
    shipped["encoders"] = {}
    for encoder_config in encoders:  # every B2 encoder built on this backbone
        encoder = load_or_pretrain_encoder(TrialConfig.model_validate(encoder_config), data,
                                           pretrained, cache_dir)
        shipped["encoders"][encoder.key] = {
            "state": {name: t.numpy() for name, t in encoder.state.items()},
            "meta": encoder.meta,
        }
    return shipped


def ship_backbones(
    plans: dict[str, BackbonePlan], data_dir: str | None, cache_dir: str, cpus_per_task: int
) -> dict[str, ray.ObjectRef]:
    """Pretrain every planned backbone as a Ray task; return key -> object ref of its artefacts."""
    task = ray.remote(num_cpus=cpus_per_task)(_build)
    started = time.perf_counter()
    refs = {
        key: task.remote(plan.config.model_dump(), data_dir, cache_dir,
                         plan.needs_base_forecasts, cpus_per_task,
                         [cfg.model_dump() for cfg in plan.encoders.values()])
        for key, plan in plans.items()
    }
    for key, ref in refs.items():
        shipped = ray.get(ref)
        how = "loaded from cache" if shipped["loaded_from_cache"] else "pretrained"
        log.info("backbone %s (%s, %d trials): %s (pretraining took %.1f s)", key,
                 plans[key].config.data.dataset, len(plans[key].trials), how,
                 shipped["meta"]["pretrain_seconds"])
    log.info("%d backbone(s) ready in %.1f s", len(refs), time.perf_counter() - started)
    return refs


def unpack(shipped: dict[str, Any], cfg: TrialConfig, data: PreparedData) -> TrialArtefacts:
    """A trial's view of shipped artefacts: the model, the base forecasts and the B2 encoder it
    uses, when there are any."""
    with warnings.catch_warnings():  # object-store arrays are read-only; nothing writes to them
        warnings.simplefilter("ignore", UserWarning)
        model = load_backbone(cfg.backbone, data.seq_len, data.horizon,
                              {k: torch.from_numpy(v) for k, v in shipped["state"].items()})
        base = None
        if "base_forecasts" in shipped:
            base = BaseForecasts(shipped["base_first_start"],
                                 torch.from_numpy(shipped["base_forecasts"]))
        encoder = None
        if cfg.uses_pretrained_encoder:
            key = encoder_key(cfg, shipped["key"])
            entry = shipped["encoders"][key]
            encoder = PretrainedEncoder(
                key, {k: torch.from_numpy(v) for k, v in entry["state"].items()}, entry["meta"],
                loaded_from_cache=True)
    pretrained = Pretrained(shipped["key"], None, model, shipped["meta"],
                            loaded_from_cache=shipped["loaded_from_cache"])
    return TrialArtefacts(data, pretrained, base, encoder)
