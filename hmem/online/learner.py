"""One online method: a base forecaster, cached or live, and an optional CHRC bank.

Every method of the control search space is this class with different switches, so baselines and
H-Mem run the same protocol on the same stream:

- ``frozen``: cached forecasts, nothing trains;
- ``online`` / ``online_slow``: the backbone alone trains on the delayed loss;
- ``p2p7p8``: CHRC trains and the backbone trains in the same step at ``online_lr_scale``;
- ``p2p7p8_frozen``: CHRC trains on cached forecasts of a frozen backbone.

An update on the recent window: forward (base forecast, retrieval from the memory as it was when
that window was forecast), MSE against its now fully observed target, one AdamW step on what
trains (gradient norm clipped jointly), then the delayed write of its error ``target - base``
keyed by the query the forward already computed. Parameters with no gradient this step are not
touched (each P8 bucket has its own optimiser state, as separate modules in one optimiser would).
While a bucket's memory holds fewer than ``min_entries`` usable entries its correction is off;
with a frozen backbone there is then nothing to learn and the step only writes.

The backbone runs in eval mode online (no dropout): a batch-size-one step gains nothing from it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hmem.chrc import CHRCBank, corrected_forecast
from hmem.config import TrialConfig
from hmem.online.flat import flatten_parameters
from hmem.online.probe import MechanismProbe
from hmem.online.stream import RevealedSeries
from hmem.seeding import seeded
from hmem.variants.snma import SNMALight


@dataclass
class _Trainable:
    """A part that trains: its parameters as one flat tensor, and that tensor's AdamW."""

    flat: nn.Parameter
    optimiser: torch.optim.AdamW

    @classmethod
    def of(cls, module: nn.Module, lr: float, cfg: TrialConfig) -> _Trainable:
        flat = flatten_parameters([p for p in module.parameters() if p.requires_grad])
        optimiser = torch.optim.AdamW(
            [flat], lr=lr, weight_decay=cfg.online.weight_decay, fused=True
        )
        return cls(flat, optimiser)


@dataclass
class _HotPaths:
    """The functions every step calls; compiled when ``runtime.compile`` is on.

    The update and the forecast get separate compiled copies (one runs under autograd, the other
    in inference mode); each is shared by every bucket's module.
    """

    backbone: Callable[..., torch.Tensor]
    update_correction: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    forecast_correction: Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _hot_paths(backbone: nn.Module, compile: bool | str, mode: str) -> _HotPaths:
    """``compile``: True compiles all three; "auto" the CHRC correction paths only (many small
    operations, where compiling saves 13-30 % of an ETTm1 step, the final MSE within 1.5e-7
    relative of eager), leaving the backbone eager (a few large matrix products: on Weather
    compiling it too saved 2 % and moved the MSE by 1.2e-6); False none, the exact path. Whether
    a run is long enough for "auto" is the run's to say (:func:`hmem.online.runner.compiles`)."""
    hot = _HotPaths(backbone, corrected_forecast, _forecast_only)
    if compile is False:
        return hot
    compiled = [torch.compile(fn, mode=mode)
                for fn in (hot.update_correction, hot.forecast_correction)]
    return _HotPaths(torch.compile(backbone, mode=mode) if compile is True else backbone,
                     *compiled)


def _forecast_only(module: nn.Module, pogt: torch.Tensor, base: torch.Tensor,
                   query_shift: torch.Tensor | None = None):
    forecast, _, gate = corrected_forecast(module, pogt, base, None, query_shift)
    return forecast, gate


class OnlineLearner(nn.Module):
    def __init__(
        self,
        cfg: TrialConfig,
        backbone: nn.Module,
        n_vars: int,
        horizon: int,
        device: torch.device | str = "cpu",
        encoder: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """``encoder``: B2's pretrained POGT encoder, required when ``chrc.contrastive`` is on."""
        super().__init__()
        self.cfg = cfg
        self.trains_backbone = not cfg.backbone.frozen_online
        # A copy: the learner trains (and flattens) its backbone in place, and the pretrained
        # one must stay as loaded for the next run made from the same artefacts.
        self.backbone = copy.deepcopy(backbone).eval().requires_grad_(self.trains_backbone)
        self.backbone = self.backbone.to(device)
        if cfg.uses_pretrained_encoder and encoder is None:
            raise ValueError("chrc.contrastive is on: pass the pretrained encoder "
                             "(hmem.variants.contrastive.load_or_pretrain_encoder)")
        with seeded(cfg.seed):  # initial weights: bank, probe, SNMA, in this order
            self.bank = (CHRCBank(cfg.chrc, n_vars, horizon).to(device) if cfg.chrc.enabled
                         else None)
            self.probe = MechanismProbe(cfg, self.bank, cfg.snma.enabled).to(device)
            self.snma = (
                SNMALight(cfg.snma, n_vars, horizon, cfg.chrc.feature_dim).to(device)
                if cfg.snma.enabled else None
            )
        if cfg.uses_pretrained_encoder:
            self.bank.load_frozen_encoder(encoder)
        # Sum of applied gates over corrected forecasts (a diagnostic for TensorBoard).
        self.register_buffer("gate_sum", torch.zeros((), device=device))
        # Reading a value back to the host (to skip work) is free on the CPU and stalls a GPU
        # (and breaks a CUDA graph): the step does it only on the CPU, unless runtime.sync_free.
        self._host_reads = torch.device(device).type == "cpu" and not cfg.runtime.sync_free
        # the update's retrieval limit, refilled in place: no new tensor (or copy) per step
        self._limit = torch.zeros((), dtype=torch.long, device=device)
        self.corrected = 0  # forecasts that had a correction

        lr = cfg.online.lr
        self._backbone_part = (
            _Trainable.of(self.backbone, lr * cfg.backbone.online_lr_scale, cfg)
            if self.trains_backbone else None
        )
        self._bucket_parts = [
            _Trainable.of(module, lr * cfg.chrc.lr_scale, cfg) for module in self.bank or []
        ]
        self._snma_part = (
            _Trainable.of(self.snma, lr * cfg.snma.lr_scale, cfg) if self.snma is not None
            else None
        )
        self._hot = _hot_paths(self.backbone, cfg.runtime.compile, cfg.runtime.compile_mode)

    @property
    def trainable(self) -> bool:
        return self.trains_backbone or self.bank is not None or self.snma is not None

    def _parts(self) -> list[_Trainable]:
        parts = [self._backbone_part, *self._bucket_parts, self._snma_part]
        return [part for part in parts if part is not None]

    @property
    def trainable_parameters(self) -> int:
        return sum(part.flat.numel() for part in self._parts())

    @property
    def needs_base_cache(self) -> bool:
        return self.cfg.needs_base_forecasts

    def _base(self, series: RevealedSeries, start: int) -> torch.Tensor:
        if self.needs_base_cache:
            return series.base(start)
        x, marks = series.inputs(start)
        return self._hot.backbone(x[None], marks[None])[0]

    def update(self, series: RevealedSeries, start: int) -> None:
        """Learn from the recent window at ``start`` (its target is revealed), then remember it."""
        target = series.target(start)
        base = self._base(series, start)
        prediction, bucket, query, shift, corrected = base, None, None, None, False
        if self.snma is not None:
            h = self.snma.features(series.pogt(start))
            shift = self.snma.query_shift(h)
            delta, _ = self.snma.residual(h, self.snma.state_at_forecast(start))
        if self.bank is not None:
            bucket = series.bucket(start)
            module = self.bank[bucket]
            latest = self._latest_visible(start, series.horizon)
            min_entries = self.cfg.chrc.memory.min_entries
            if (module.memory.size >= min_entries if latest is None
                    else module.memory.sees(latest, min_entries)):
                limit = None if latest is None else self._limit.fill_(latest)
                prediction, query, _ = self._hot.update_correction(
                    module, series.pogt(start), base, limit, shift
                )
                corrected = True
            else:
                with torch.no_grad():
                    query = module.encode(series.pogt(start), shift)
        losses = [F.mse_loss(prediction, target)] if prediction.requires_grad else []
        if self.snma is not None:
            losses.append(self.snma.loss(prediction, delta, target, self.snma.beta()))
        if losses:  # the bucket steps whenever it corrected (B2's query has no gradient)
            self._step(sum(losses), bucket if corrected else None)
        if bucket is not None:
            self._remember(series, start, bucket, query, target - base)

    def _remember(self, series: RevealedSeries, start: int, bucket: int, query: torch.Tensor,
                  error: torch.Tensor) -> None:
        """The delayed write: window ``start``'s error ``target - base`` under its query."""
        slot = self.bank[bucket].memory.write(query.detach(), error.detach().flatten(), start)
        self.probe.on_write(bucket, slot, series.pogt(start))

    def _latest_visible(self, start: int, horizon: int) -> int | None:
        """Latest window whose memory entry the update on window ``start`` may retrieve.

        When window ``start`` was forecast, the memory held the windows up to ``start - H`` (their
        targets had ended). Entries written since then belong to the windows just before it, whose
        targets overlap its own: an update that retrieves them is rewarded for trusting a memory
        that forecasting never has. ``update_view: all`` keeps them, as the reference did.
        """
        return start - horizon if self.cfg.chrc.memory.update_view == "forecast_time" else None

    def _step(self, loss: torch.Tensor, bucket: int | None) -> None:
        """One optimiser step on the backbone (if it trains), the bucket that corrected and the
        SNMA-Light branch (if on)."""
        loss.backward()
        parts = [self._backbone_part] if self._backbone_part is not None else []
        if bucket is not None:
            parts.append(self._bucket_parts[bucket])
        if self._snma_part is not None:
            parts.append(self._snma_part)
        if self.cfg.online.grad_clip:
            self._clip([part.flat for part in parts])
        for part in parts:
            part.optimiser.step()
            part.flat.grad.zero_()  # in place: the parameters' .grad are views of it

    def _clip(self, flats: list[nn.Parameter]) -> None:
        """``clip_grad_norm_``, the same numbers: the joint norm, then the gradients times
        ``min(1, max_norm / (norm + 1e-6))``. On the CPU, where reading the norm costs nothing,
        the multiplication is skipped when that factor is exactly 1 (most steps); on a GPU it
        always runs, so the step never waits for the device."""
        max_norm = self.cfg.online.grad_clip
        norm = torch.nn.utils.get_total_norm([flat.grad for flat in flats])
        if self._host_reads and bool(max_norm / (norm + 1e-6) >= 1.0):
            return
        torch.nn.utils.clip_grads_with_norm_(flats, max_norm, norm)

    @torch.inference_mode()
    def predict(self, series: RevealedSeries, start: int) -> torch.Tensor:
        """Forecast ``[H, C]`` of the current window at ``start`` from its input alone."""
        base = forecast = self._base(series, start)
        shift = None
        probe = self.probe.due()
        if self.snma is not None:
            h = self.snma.features(series.pogt(start))
            shift = self.snma.query_shift(h)
            delta, z = self.snma.residual(h, self.snma.state)
            beta = self.snma.beta()
        if self.bank is not None:
            bucket = series.bucket(start)
            module = self.bank[bucket]
            if module.memory.ready:
                forecast, gate = self._hot.forecast_correction(
                    module, series.pogt(start), forecast, shift
                )
                self.gate_sum += gate
                self.corrected += 1
                if probe:
                    self.probe.observe_correction(module, bucket, series.pogt(start), shift)
        if self.snma is not None:
            if probe:
                correction = forecast - base if forecast is not base else None
                self.probe.observe_residual(beta * delta, correction)
            forecast = forecast + beta * delta
            self.snma.remember(start, z)
        return forecast

    def start_test(self) -> None:
        """The memory starts empty on the test stream; what was learned in warm-up is kept."""
        if self.bank is not None:
            self.bank.clear_memories()
        if self.snma is not None:
            self.snma.reset()
        self.probe.start_test()
        self.gate_sum.zero_()
        self.corrected = 0

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything that decides the numbers to come: what trains, its optimiser state, the
        memories (buffers and counters) and the diagnostics. A frozen backbone is not saved."""
        modules = {"bank": self.bank.state_dict() if self.bank is not None else None,
                   "snma": self.snma.state_dict() if self.snma is not None else None,
                   "probe": self.probe.state_dict()}
        if self.trains_backbone:
            modules["backbone"] = self.backbone.state_dict()
        return {
            **modules,
            "optimisers": [part.optimiser.state_dict() for part in self._parts()],
            "gate_sum": self.gate_sum.clone(),
            "corrected": self.corrected,
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        if self.bank is not None:
            self.bank.load_state_dict(state["bank"])
        if self.snma is not None:
            self.snma.load_state_dict(state["snma"])
        if self.trains_backbone:
            self.backbone.load_state_dict(state["backbone"])
        self.probe.load_state_dict(state["probe"])
        for part, saved in zip(self._parts(), state["optimisers"], strict=True):
            part.optimiser.load_state_dict(saved)
        self.gate_sum.copy_(state["gate_sum"])
        self.corrected = int(state["corrected"])
