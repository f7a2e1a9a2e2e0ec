"""Search spaces: a base config, named datasets and variants (overrides), and seeds.

A trial's config is the defaults of :mod:`hmem.config`, then the space's ``base``, then the
dataset's overrides, then the variant's, then the seed and any ``--set`` overrides. Every
combination is validated when the file loads, so a typo fails before anything runs, with the
file and the dotted key in the message.

    name: control
    base: {data: {seq_len: 512, horizon: 96}}
    datasets:
      ETTm1: {backbone: {itransformer: {d_model: 128}}}
      Weather: {online: {warmup: false}}
    variants:
      frozen: {chrc: {enabled: false}}
      p2p7p8: {backbone: {online_lr_scale: 0.1}}
    seeds: [0, 1]

How a space runs on Ray Tune (``hmem tune launch``) is part of the same file: ``search`` (``grid``
over variants x datasets x seeds, or ``optuna`` over declared ranges), an optional ``scheduler``,
``resources`` per trial, ``max_concurrent``, ``report_every`` / ``checkpoint_every`` (in test
windows), ``max_failures`` and ``storage``. None of it changes a trial's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from hmem.config import (
    TrialConfig,
    build_trial_config,
    deep_merge,
    dotted_to_tree,
    format_validation_error,
)
from hmem.data.loading import BUILTIN_FILES, SYNTHETIC
from hmem.errors import ConfigError

#: Where ``hmem tune launch`` keeps an experiment when neither ``--storage`` nor the space's
#: ``storage`` names a place.
DEFAULT_STORAGE = "results/tune"
#: Where ``hmem campaign`` keeps a campaign's folder (its stages, log and report) by default.
CAMPAIGN_STORAGE = "results/campaigns"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distribution(_Strict):
    """A range Optuna samples one config value from."""

    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> Distribution:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty 'values' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} range needs 'low' and 'high'")
        if self.low >= self.high:
            raise ValueError(f"'low' must be below 'high' (low={self.low}, high={self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"a loguniform range needs low > 0 (low={self.low})")
        return self

    def may_sample(self, value: float) -> bool:
        """Whether ``value`` can be drawn (a range includes its ends)."""
        if self.type == "choice":
            return value in self.values
        return self.low <= value <= self.high

    def bounds(self) -> list[Any]:
        """Values at the edges of the range, to validate against the config schema."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class SearchConfig(_Strict):
    kind: Literal["grid", "optuna"] = "grid"
    metric: Literal["mse", "mae", "rmse", "warmup_mse"] = Field(
        "mse", description="what the search optimises; warmup_mse: the validation MSE, for "
        "tuning that never looks at the test stream (with online.test_stream: false)")
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(1, ge=1, description="optuna: trials to sample")
    params: dict[str, Distribution] = Field(
        default_factory=dict, description="optuna: dotted config key -> range"
    )
    seed: int = Field(0, ge=0, description="optuna: sampler seed")

    @model_validator(mode="after")
    def _params_match_kind(self) -> SearchConfig:
        if self.kind == "optuna" and not self.params:
            raise ValueError("an optuna search needs 'params': dotted config keys with ranges")
        if self.kind == "grid" and (self.params or self.num_samples != 1):
            raise ValueError("'params' and 'num_samples' belong to kind: optuna; a grid runs "
                             "every variant x dataset x seed once")
        return self


class SchedulerConfig(_Strict):
    """ASHA on the running test MSE; time is counted in reports (``report_every`` windows)."""

    kind: Literal["asha"] = "asha"
    grace_period: int = Field(3, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int = Field(1000, ge=1)


class StoppingConfig(_Strict):
    """Futility stopping (``analysis.futility``; on by default in ``hmem campaign``): a variant
    whose control has already run (same dataset, seed and backbone, in ``controls``) is stopped
    once the upper bound on its whole-stream gain over that control is below ``min_gain``."""

    enabled: bool = False
    controls: list[str] = Field(
        default_factory=list, description="experiment folders holding the finished control "
        "runs to compare with (the campaign passes its S0 stage)")
    min_gain: float = Field(0.005, description="the plan's 0.5 %")
    min_share: float = Field(0.25, gt=0, lt=1, description="no look before this share")
    look_every: float = Field(0.05, gt=0, lt=1, description="then one look per this share")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="chance, over all looks, of stopping "
                         "a variant whose whole-stream gain reaches min_gain")

    @model_validator(mode="after")
    def _has_controls(self) -> StoppingConfig:
        if self.enabled and not self.controls:
            raise ValueError("stopping.enabled needs stopping.controls: the experiment folders "
                             "whose finished control runs the variants are compared with")
        return self


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, description="a fraction shares one GPU between trials")


@dataclass(frozen=True)
class Cell:
    """One trial of a grid: which variant, dataset and seed."""

    variant: str
    dataset: str
    seed: int

    def label(self) -> str:
        dataset = Path(self.dataset).name.split(".")[0] if "/" in self.dataset else self.dataset
        return f"{self.variant}-{dataset}-s{self.seed}"


class SearchSpace(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = Field(min_length=1)
    variants: dict[str, dict[str, Any]] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    backbone_per_seed: bool = Field(
        False, description="false: the repeats share one pretrained backbone per dataset and "
        "vary the seed of what trains online; true: each seed pretrains its own backbone"
    )
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig | None = None
    stopping: StoppingConfig = StoppingConfig()
    resources: Resources = Resources()
    max_concurrent: int | None = Field(None, ge=1)
    report_every: int = Field(1000, ge=1, description="test windows between Tune reports")
    checkpoint_every: int = Field(5000, ge=1, description="test windows between checkpoints")
    max_failures: int = Field(2, ge=0, description="restarts of a trial from its checkpoint")
    storage: str | None = Field(None, description="default experiment storage (path or URI)")
    _source: str = PrivateAttr("search space")

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpace:
        if self.checkpoint_every % self.report_every:
            raise ValueError(
                f"checkpoint_every must be a multiple of report_every, since a checkpoint rides "
                f"on a report (checkpoint_every={self.checkpoint_every}, "
                f"report_every={self.report_every})"
            )
        if self.search.kind == "optuna" and (len(self.variants) > 1 or len(self.datasets) > 1):
            raise ValueError(
                "an optuna search tunes one variant on one dataset; this space has variants "
                f"{list(self.variants)} and datasets {list(self.datasets)}: write one space per "
                "combination, or use kind: grid"
            )
        return self

    @property
    def source(self) -> str:
        """Where the space came from (its file), for error messages."""
        return self._source

    @field_validator("datasets", "variants", mode="before")
    @classmethod
    def _none_means_no_overrides(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: ({} if item is None else item) for key, item in value.items()}
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers (got {seeds})")
        return seeds

    def dataset_layer(self, dataset: str) -> dict[str, Any]:
        """Overrides of ``dataset``; a file path not listed in the space gets none."""
        if dataset in self.datasets:
            layer = self.datasets[dataset]
            named = layer.get("data", {}).get("dataset", dataset)
            return {**layer, "data": {**layer.get("data", {}), "dataset": named}}
        if dataset in BUILTIN_FILES or dataset == SYNTHETIC:
            raise ConfigError(
                f"{self.source}: dataset {dataset!r} is not in this space's datasets "
                f"({', '.join(self.datasets)}); add it there or pass a .csv/.csv.gz path"
            )
        return {"data": {"dataset": dataset}}

    def trial_config(
        self,
        variant: str,
        dataset: str,
        seed: int | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> TrialConfig:
        if variant not in self.variants:
            raise ConfigError(
                f"{self.source}: no variant {variant!r}; this space has "
                f"{', '.join(self.variants)}"
            )
        chosen_seed = self.seeds[0] if seed is None else seed
        per_seed = {"pretrain": {"seed": chosen_seed}} if self.backbone_per_seed else {}
        return build_trial_config(
            self.base,
            self.dataset_layer(dataset),
            self.variants[variant],
            {"seed": chosen_seed, **per_seed},
            overrides or {},
            source=f"{self.source} (variant {variant}, dataset {dataset})",
        )

    def select(
        self,
        variants: list[str] | None = None,
        datasets: list[str] | None = None,
        seeds: list[int] | None = None,
    ) -> SearchSpace:
        """This space restricted to some of its variants and datasets, and run on ``seeds``.

        Why: rerunning part of a large space (one dataset of the plan, the cells that failed,
        more seeds for a reproduction) must give exactly the configs the whole file gives, which
        a hand-copied smaller file cannot promise. Variants keep the file's order, so the
        analysis still walks them as the file declares. Seeds are free: a repeat is a new seed.
        """
        picked: dict[str, Any] = {}
        for key, names in (("variants", variants), ("datasets", datasets)):
            available = getattr(self, key)
            if names is None:
                continue
            unknown = [name for name in names if name not in available]
            if unknown:
                raise ConfigError(f"{self.source}: no {key[:-1]} {', '.join(map(repr, unknown))}; "
                                  f"this space has {', '.join(available)}")
            picked[key] = {name: entry for name, entry in available.items() if name in names}
        if seeds is not None:
            picked["seeds"] = seeds
        try:
            subset = SearchSpace.model_validate({**self.model_dump(), **picked})
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, self.source)) from None
        subset._source = self._source
        return subset

    def may_sample(self, key: str, value: float) -> bool:
        """Whether this space's search samples ``key`` (dotted) from a range that includes
        ``value`` (the grid's own values are in its configs already)."""
        sampled = self.search.params.get(key)
        return sampled is not None and sampled.may_sample(value)

    def cells(self) -> list[Cell]:
        """Every trial of the grid, variants outermost (the order the file declares them)."""
        return [Cell(v, d, s) for v in self.variants for d in self.datasets for s in self.seeds]

    def validate_all(self) -> None:
        for dataset in self.datasets:
            for variant in self.variants:
                cfg = self.trial_config(variant, dataset)
                if self.search.metric == "warmup_mse" and not cfg.online.warmup:
                    raise ConfigError(
                        f"{self.source}: search.metric warmup_mse is the validation MSE of the "
                        f"warm-up, but variant {variant} on {dataset} has online.warmup: false")
                for key, distribution in self.search.params.items():
                    for value in distribution.bounds():
                        self.trial_config(variant, dataset, overrides=dotted_to_tree({key: value}))


def _read(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping, with ``extends: OTHER.yaml`` resolved (paths relative to the file).

    A file that extends another takes everything it does not set from it; ``base`` merges key
    by key; ``datasets`` lists the datasets of the new space, each merged over the other file's
    entry of the same name (so ``datasets: {ETTm1: {}}`` picks ETTm1 with its settings).
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        where = f" (extended by {chain[-1]})" if chain else ""
        raise ConfigError(f"{path}: no such search-space file{where}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with name, datasets, variants, seeds")
    parent_name = raw.pop("extends", None)
    if parent_name is None:
        return raw
    parent_path = (path.parent / str(parent_name)).resolve()
    if parent_path in chain or parent_path == path.resolve():
        raise ConfigError(f"{path}: extends {parent_name} in a loop")
    parent = _read(parent_path, (*chain, path.resolve()))
    merged = {**parent, **raw}
    merged["base"] = deep_merge(parent.get("base") or {}, raw.get("base") or {})
    if "datasets" in raw:
        inherited = parent.get("datasets") or {}
        merged["datasets"] = {name: deep_merge(inherited.get(name) or {}, entry or {})
                              for name, entry in (raw["datasets"] or {}).items()}
    return merged


def load_space(path: str | Path) -> SearchSpace:
    """Read a search-space YAML with ``safe_load`` and validate every combination in it."""
    path = Path(path)
    raw = _read(path)
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None
    space._source = str(path)
    space.validate_all()
    return space
