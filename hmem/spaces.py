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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from hmem.config import TrialConfig, build_trial_config, format_validation_error
from hmem.data.loading import BUILTIN_FILES, SYNTHETIC
from hmem.errors import ConfigError


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = Field(min_length=1)
    variants: dict[str, dict[str, Any]] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    _source: str = PrivateAttr("search space")

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
        return build_trial_config(
            self.base,
            self.dataset_layer(dataset),
            self.variants[variant],
            {"seed": chosen_seed},
            overrides or {},
            source=f"{self.source} (variant {variant}, dataset {dataset})",
        )

    def validate_all(self) -> None:
        for dataset in self.datasets:
            for variant in self.variants:
                self.trial_config(variant, dataset)


def load_space(path: str | Path) -> SearchSpace:
    """Read a search-space YAML with ``safe_load`` and validate every combination in it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such search-space file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with name, datasets, variants, seeds")
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None
    space._source = str(path)
    space.validate_all()
    return space
