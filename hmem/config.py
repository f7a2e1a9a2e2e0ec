"""Typed, frozen configuration of one trial.

Every default is defined here and nowhere else. Search spaces (``hmem.spaces``) and ``--set``
overrides are plain nested dicts merged over these defaults and validated once; unknown keys and
wrong types are rejected with the key's dotted path.

The defaults are the plan's design: the published best CHRC (P2 soft gate + P7 horizon mask +
P8 four time buckets, softmax aggregation) on a *frozen* backbone. ``backbone.online_lr_scale``
> 0 reproduces what the published numbers really ran (the backbone training online inside the
same optimiser step); see ``../shared/docs/hmem-reference.md`` section 3.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hmem.directions import BackboneRegime, Direction
from hmem.errors import ConfigError


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------- data


class SyntheticConfig(_Config):
    """Shape of the built-in ``synthetic`` dataset (deterministic: no seed of its own)."""

    rows: int = Field(8000, ge=200, description="number of 15-minute rows")
    variables: int = Field(4, ge=1, le=64)


class DataConfig(_Config):
    dataset: str = Field("synthetic", description="ETTm1, Weather, synthetic or a CSV path")
    seq_len: int = Field(512, ge=2, description="lookback rows of every window")
    horizon: int = Field(96, ge=1, description="forecast horizon H (pred_len)")
    train_ratio: float = Field(0.2, gt=0, lt=1, description="ratio split (all but ETTm1)")
    val_ratio: float = Field(0.05, gt=0, lt=1, description="ratio split (all but ETTm1)")
    max_val_windows: int | None = Field(None, ge=1, description="truncate the warm-up stream")
    max_test_windows: int | None = Field(None, ge=1, description="truncate the test stream")
    duplicate_timestamps: Literal["error", "keep_identical"] = Field(
        "error", description="keep_identical keeps a repeated row (the public Weather file has one)"
    )
    synthetic: SyntheticConfig = SyntheticConfig()

    @model_validator(mode="after")
    def _ratios_leave_a_test_split(self) -> DataConfig:
        if self.train_ratio + self.val_ratio >= 1:
            raise ValueError(
                f"train_ratio + val_ratio must be below 1 to leave a test split "
                f"(train_ratio={self.train_ratio}, val_ratio={self.val_ratio})"
            )
        return self


# --------------------------------------------------------------------------- backbone


class ITransformerConfig(_Config):
    e_layers: int = Field(2, ge=1)
    d_model: int = Field(128, ge=1)
    d_ff: int = Field(128, ge=1)
    n_heads: int = Field(8, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ITransformerConfig:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model must be a multiple of n_heads (d_model={self.d_model}, "
                f"n_heads={self.n_heads})"
            )
        return self


class BackboneConfig(_Config):
    kind: Literal["itransformer", "nlinear"] = "itransformer"
    itransformer: ITransformerConfig = ITransformerConfig()
    online_lr_scale: float = Field(
        0.0,
        ge=0,
        description="0 freezes the backbone online (the plan's design); s > 0 trains it in the "
        "same optimiser step at s * online.lr (the published runs used 0.1)",
    )

    @property
    def frozen_online(self) -> bool:
        return self.online_lr_scale == 0


class PretrainConfig(_Config):
    """Offline training of the backbone on the train split, early-stopped on validation MSE."""

    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(10, ge=1)
    patience: int = Field(3, ge=1)
    constant_lr_epochs: int = Field(
        3, ge=0, description="epochs at full lr before decay starts (the reference's type3: 3)"
    )
    lr_decay: float = Field(
        0.9, gt=0, le=1, description="lr multiplier per epoch after those (type3: 0.9)"
    )
    seed: int = Field(0, ge=0, description="seed of the backbone's weights and batch order")


# --------------------------------------------------------------------------- CHRC


class MemoryConfig(_Config):
    capacity: int = Field(1000, ge=1)
    min_entries: int = Field(10, ge=1, description="retrieval stays off below this many entries")
    age_decay: float = Field(0.995, gt=0, le=1, description="similarity *= age_decay ** age")
    evict_importance: float = Field(0.4, ge=0, description="eviction weight of mean |error|")
    evict_recency: float = Field(0.4, ge=0, description="eviction weight of recency")
    evict_access: float = Field(0.2, ge=0, description="eviction weight of access count")
    update_view: Literal["forecast_time", "all"] = Field(
        "forecast_time",
        description="what the update on a window retrieves from: the entries that existed when "
        "that window was forecast (forecast_time), or everything stored since (all)",
    )


class RetrievalConfig(_Config):
    top_k: int = Field(5, ge=1)
    aggregation: Literal["softmax", "weighted_mean"] = "softmax"
    temperature: float = Field(0.1, gt=0, description="softmax temperature over similarities")
    similarity: Literal["cosine", "bilinear", "mlp"] = Field(
        "cosine", description="B1: how a query scores keys (bilinear and mlp are learned)"
    )
    shortlist: int = Field(
        64, ge=1, description="B1: cosine candidates a learned similarity re-scores (mlp, soft)"
    )
    soft: bool = Field(
        False,
        description="B1's soft retrieval (plan 5.6): softmax weights over the whole shortlist "
        "instead of the top-k, so the learned similarity gets a gradient from every candidate",
    )
    mode: Literal["topk", "attention"] = Field(
        "topk", description="B3: attention weighs every entry instead of the top-k"
    )
    attention_heads: int = Field(4, ge=1)
    attention_window: int | None = Field(
        None, ge=1, description="B3: attend only to the entries of the last N writes"
    )
    attention_temperature: float | None = Field(
        None, gt=0, description="B3: logit temperature per head (None: retrieval.temperature, "
        "the plan's literal form)"
    )
    attention_learn_scale: bool = Field(
        False, description="B3: learn each head's logit scale (from 1 / attention_temperature), "
        "so content can outweigh the recency prior"
    )

    @model_validator(mode="after")
    def _mechanisms_compose(self) -> RetrievalConfig:
        if self.mode == "attention" and self.similarity != "cosine":
            raise ValueError(
                f"retrieval.mode attention scores entries with its own learned projections, so "
                f"retrieval.similarity must stay cosine (got {self.similarity!r}); use "
                f"mode: topk to learn the similarity"
            )
        if self.soft and self.similarity == "cosine":
            raise ValueError(
                "retrieval.soft is B1's soft retrieval for a learned similarity: set "
                "retrieval.similarity to bilinear or mlp"
            )
        if (self.similarity == "mlp" or self.soft) and self.shortlist < self.top_k:
            raise ValueError(
                f"retrieval.shortlist must be at least top_k (shortlist={self.shortlist}, "
                f"top_k={self.top_k})"
            )
        return self


class SoftGateConfig(_Config):
    """P2: scale the correction by sigmoid(steepness * (max_similarity - threshold))."""

    enabled: bool = True
    threshold: float = Field(0.5, ge=-1, le=1)
    steepness: float = Field(10.0, gt=0)


class HorizonMaskConfig(_Config):
    """P7: weight w(h) of the correction at horizon step h = 0 .. H-1."""

    mode: Literal["exp", "linear", "off"] = "exp"
    decay: float = Field(0.98, gt=0, le=1, description="exp mode: w(h) = max(decay**h, floor)")
    floor: float = Field(0.2, ge=0, le=1)


class BucketConfig(_Config):
    """P8: independent CHRC modules selected by the calendar of a window's last input row."""

    count: int = Field(4, ge=1, description="1 switches P8 off")


class ContrastiveConfig(_Config):
    """B2: pretrain the POGT encoder with InfoNCE on frozen-backbone errors, then freeze it."""

    enabled: bool = False
    temperature: float = Field(0.1, gt=0)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    seed: int = Field(0, ge=0)


class ChrcConfig(_Config):
    enabled: bool = True
    feature_dim: int = Field(128, ge=1, description="size of keys and queries")
    hidden_dim: int = Field(256, ge=1, description="width of the POGT encoder")
    refiner_dim: int = Field(256, ge=1, description="hidden width of the refiner MLP")
    gate_dim: int = Field(64, ge=1, description="hidden width of the quality / confidence gates")
    pogt_ratio: float = Field(0.5, gt=0, le=1, description="POGT rows = round(H * pogt_ratio)")
    lr_scale: float = Field(0.5, gt=0, description="CHRC lr = lr_scale * online.lr")
    memory: MemoryConfig = MemoryConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    soft_gate: SoftGateConfig = SoftGateConfig()
    horizon_mask: HorizonMaskConfig = HorizonMaskConfig()
    buckets: BucketConfig = BucketConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()

    @model_validator(mode="after")
    def _k_fits_memory(self) -> ChrcConfig:
        if self.retrieval.mode == "attention" and self.feature_dim % self.retrieval.attention_heads:
            raise ValueError(
                f"feature_dim must be a multiple of retrieval.attention_heads "
                f"(feature_dim={self.feature_dim}, attention_heads="
                f"{self.retrieval.attention_heads})"
            )
        if self.retrieval.top_k > self.memory.min_entries:
            raise ValueError(
                f"retrieval.top_k must not exceed memory.min_entries, or the first retrievals "
                f"would return empty slots (top_k={self.retrieval.top_k}, "
                f"min_entries={self.memory.min_entries})"
            )
        if self.memory.min_entries > self.memory.capacity:
            raise ValueError(
                f"memory.min_entries must not exceed memory.capacity, or retrieval never starts "
                f"(min_entries={self.memory.min_entries}, capacity={self.memory.capacity})"
            )
        return self


# --------------------------------------------------------------------------- variants


class SnmaConfig(_Config):
    """A1 SNMA-Light, a residual branch beside CHRC, and A2, its feature in CHRC's query.

    A2 needs A1's branch for its feature; with ``beta: 0`` the branch adds nothing to the
    forecast and serves A2 alone.
    """

    enabled: bool = Field(False, description="A1: Y = Y_base + CHRC + beta * delta_snma")
    beta: float = Field(0.1, ge=0, description="weight of the residual (plan sweep 0.05-0.3)")
    memory_dim: int = Field(128, ge=1)
    lr_scale: float = Field(0.5, gt=0, description="its lr = lr_scale * online.lr")
    beta_warmup_windows: int = Field(
        0, ge=0, description="beta ramps linearly from 0 over this many windows (plan 5.6)"
    )
    enhance_query: bool = Field(
        False, description="A2: CHRC query = normalize(feature + gamma * W h_snma)"
    )
    gamma: float = Field(0.1, ge=0, description="A2: weight of the SNMA feature in the query")
    query_shift: Literal["absolute", "relative"] = Field(
        "absolute",
        description="A2: absolute adds gamma * W h (the plan's literal form, about 3 % of the "
        "feature's norm at initialisation); relative adds gamma * sqrt(D) * W h / ||W h||, a "
        "shift of gamma times the layer-normalised feature's norm",
    )


# --------------------------------------------------------------------------- online / runtime


class OnlineConfig(_Config):
    lr: float = Field(1e-5, gt=0, description="online learning rate; each part scales it")
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 switches clipping off")
    warmup: bool = Field(True, description="run the loop over the validation segment first")
    test_stream: bool = Field(
        True, description="false: stop after the warm-up, never reading the test segment (a "
        "tuning trial whose objective is the validation MSE, warmup_mse)")
    test_share: float = Field(
        1.0, gt=0, le=1, description="stream only this first share of the test windows (a "
        "selection run: where a dataset has no warm-up, choices use the first 20 %)")

    @model_validator(mode="after")
    def _streams_something(self) -> OnlineConfig:
        if not self.test_stream and not self.warmup:
            raise ValueError("online.test_stream: false runs the validation (warm-up) stream "
                             "only: set online.warmup: true")
        return self


class RuntimeConfig(_Config):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(1, ge=1, description="torch threads of the online loop")
    pretrain_threads: int | None = Field(None, ge=1, description="None: all cores")
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the online hot path. auto: the CHRC correction paths "
        "of runs of at least 10,000 windows (13-30 % less per ETTm1 step after a one-off "
        "compilation of 5-20 s; the final MSE within 2e-7 relative of eager, as fused "
        "operations round differently); true: the backbone too; false: eager, the exact path"
    )
    compile_mode: Literal["default", "reduce-overhead"] = Field(
        "default", description="torch.compile mode of runtime.compile; reduce-overhead captures "
        "the step in CUDA graphs on a GPU (the same as default on the CPU)"
    )
    sync_free: bool = Field(
        False, description="never read a device value back to the host in the online step, as "
        "on a GPU (where it is always so): the CPU skips a no-op clip by reading the norm"
    )
    probe_every: int = Field(
        50, ge=0, description="measure how much each direction's mechanism acts on every N-th "
        "test forecast (reads only; 0 switches it off)"
    )
    base_cache: bool = Field(
        True, description="frozen backbone: read its forecasts from the precomputed cache "
        "instead of running it every step (same numbers, much faster)"
    )

    @property
    def pretrain_thread_count(self) -> int:
        return self.pretrain_threads or os.cpu_count() or 1


class TrialConfig(_Config):
    """Everything one run of ``hmem run`` depends on; logged in full with its results."""

    seed: int = Field(0, ge=0, description="seed of everything trained online")
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    pretrain: PretrainConfig = PretrainConfig()
    chrc: ChrcConfig = ChrcConfig()
    snma: SnmaConfig = SnmaConfig()
    online: OnlineConfig = OnlineConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _variants_have_what_they_need(self) -> TrialConfig:
        if self.snma.enhance_query and not self.snma.enabled:
            raise ValueError(
                "snma.enhance_query (A2) takes its feature from the SNMA-Light branch (A1): set "
                "snma.enabled: true as well (with snma.beta: 0 the branch serves A2 alone)"
            )
        if self.snma.enhance_query and not self.chrc.enabled:
            raise ValueError("snma.enhance_query (A2) changes CHRC's query: set chrc.enabled: true")
        return self

    @property
    def seed_matters(self) -> bool:
        """Whether the seed can change the numbers. It initialises what CHRC and SNMA-Light
        train online; without either (the CHRC-free baselines) every seed gives the same run,
        since the backbone comes pretrained with its own seed, so one seed stands for all."""
        return self.chrc.enabled or self.snma.enabled

    @property
    def uses_pretrained_encoder(self) -> bool:
        """B2: CHRC's POGT encoder comes pretrained (``hmem pretrain-encoder``) and frozen."""
        return self.chrc.enabled and self.chrc.contrastive.enabled

    @property
    def needs_base_forecasts(self) -> bool:
        """A frozen backbone's forecasts never change: the loop reads them from the cache."""
        return self.backbone.frozen_online and self.runtime.base_cache

    @property
    def backbone_regime(self) -> BackboneRegime:
        """Frozen, or learning online at which rate: runs are only ever paired within one."""
        return BackboneRegime.of(self)

    @property
    def regime(self) -> str:
        """A human-readable label of the regime, e.g. ``backbone=frozen chrc=on`` (for logs and
        tables; code compares :attr:`backbone_regime` and :attr:`direction`)."""
        regime = f"{self.backbone_regime.label} chrc={'on' if self.chrc.enabled else 'off'}"
        return regime + (" snma=on" if self.snma.enabled else "")

    @property
    def direction(self) -> Direction:
        """Which direction of the plan this trial tests (:meth:`Direction.of`)."""
        return Direction.of(self)


# --------------------------------------------------------------------------- building


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in; nested dicts merge, everything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_trial_config(*layers: dict[str, Any], source: str = "config") -> TrialConfig:
    """Merge override layers (earliest first) over the defaults and validate the result."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    try:
        return TrialConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``source: dotted.key: what was expected (got value)``."""
    lines = []
    for problem in err.errors():
        path = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        got = ""
        if problem["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and nesting)"
        elif problem["type"] not in {"missing", "model_type", "value_error"} and not isinstance(
            problem["input"], dict
        ):
            got = f" (got {problem['input']!r})"
        lines.append(f"{source}: {path + ': ' if path else ''}{message}{got}")
    return "\n".join(lines)


def parse_set_overrides(assignments: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=true"]`` into ``{"a": {"b": 1}, "c": True}``; values are YAML scalars."""
    import yaml

    pairs: list[tuple[str, Any]] = []
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected dotted.key=value, e.g. online.lr=3e-5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err})") from None
        pairs.append((key, value))
    return dotted_to_tree(pairs, what="--set")


def dotted_to_tree(flat: dict[str, Any] | list[tuple[str, Any]], what: str = "key"
                   ) -> dict[str, Any]:
    """``{"online.lr": 1e-5}`` (or the same as pairs) -> ``{"online": {"lr": 1e-5}}``; a later
    key wins, and a key below one that already holds a plain value is refused."""
    tree: dict[str, Any] = {}
    for key, value in flat.items() if isinstance(flat, dict) else flat:
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{what} {key!r}: {part} was already given a plain value")
        node[leaf] = value
    return tree
