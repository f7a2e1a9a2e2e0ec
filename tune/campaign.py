"""``hmem campaign SPACE.yaml``: the plan's stages in order, with its rules deciding in between.

    S0  the controls; the strongest CHRC-free baseline of each control's backbone regime
        (frozen, or learning online), chosen on validation by selection runs that stop where
        the choice is made (S0-select) where the regime has several, then run whole;
        S0-seeds: the controls on further seeds, so that every control has ``control_seeds``
        (3 by default) for the noise floor. A baseline gives the same numbers on every seed, so
        it runs once per dataset: its selection runs on the first seed, its whole run beside the
        controls' further seed in S0-seeds (or on the first seed, in a stage S0-BASELINE of its
        own)
    S1  A1: its first two variants (A1-base and the first beta), then the rest of the sweep
        unless those two made A1 ineffective; A2 on the datasets where A1 gained (plan 5.2)
    S2  B1, B3, B2 in that order, each the same way
        The first experiments of A1, B1, B3 and B2 depend on S0 alone and share one stage
        (``directions-first``); then each direction in turn: the rest, reproduction
    S3  the best A variant combined with the best B variant, per dataset, when both gained

After each direction, a best variant that gained but "needs reproduction" is rerun with extra
seeds, together with its control on the same seeds unless S0 already ran them (a gain is always
paired by seed). The stages of the directions stop futile variants early (``--no-stopping``
runs every window; :mod:`tune.futility`), comparing them with S0's controls. Every
stage is an ordinary Ray Tune experiment under ``STORAGE/NAME/``, launched with the same code as
``hmem tune launch`` from a space file written beside it (``stages/STAGE.yaml``), so each can be
opened, reported on or resumed by itself. Decisions depend only on finished results, so
``--resume`` replays them: stages that finished are read back, not rerun; an interrupted stage
continues through ``Tuner.restore``. ``campaign.log`` records each decision and why.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis.campaign_log import FINISHED, LOG_FILE
from analysis.loading import AnalysisError, load_trials
from analysis.report import write_report
from analysis.rules import Rules, a2_gate, s3_pair, variant_table, verdicts
from hmem.config import deep_merge
from hmem.directions import BackboneRegime, Direction
from hmem.errors import ConfigError, HmemError
from hmem.spaces import CAMPAIGN_STORAGE, SearchSpace, load_space
from tune.ray_api import can_restore

log = logging.getLogger(__name__)

#: Directions expanded stage by stage, in plan 5.2's order (A2 and S3 are gated).
SEQUENCE = [d for d in Direction if d.family is not None]
#: The stage of the first experiments of every direction no gate holds back.
FIRSTS = "directions-first"


class StageInterrupted(HmemError):
    """A stage's search ended with trials unfinished: the rules must not judge it yet."""


@dataclass(frozen=True)
class CampaignOptions:
    address: str | None = None
    storage: str = CAMPAIGN_STORAGE
    name: str | None = None
    resume: bool = False
    data_dir: str | None = None
    cache_dir: str | None = None
    extra_seeds: int = 2  # seeds added to a best variant that needs reproduction
    stopping: bool = True  # futility stopping of the directions' stages against S0's controls
    control_seeds: int = 3  # seeds 0..N-1 of every control (the noise floor needs 3)
    rules: Rules = field(default_factory=Rules)


@dataclass
class Campaign:
    """A campaign in progress: the stages run so far and what was decided."""

    space: SearchSpace
    folder: Path
    options: CampaignOptions
    launcher: Callable[..., Any]
    stages: list[str] = field(default_factory=list)  # experiment folders, in order
    decisions: list[str] = field(default_factory=list)
    _loaded: dict[str, pd.DataFrame] = field(default_factory=dict)  # finished stages' trials

    # ------------------------------------------------------------------ running stages

    def run_stage(self, stage: str, variants: dict[str, dict], datasets: list[str],
                  seeds: list[int] | None = None, futility: bool = True,
                  layers: dict[str, dict] | None = None) -> None:
        """Launch (or resume, or read back) one stage: these variants on these datasets.

        With ``futility`` (and ``options.stopping``), its variants are stopped for futility
        against the controls of S0, which ran first; S0 itself and reproduction stages (whose
        controls run beside the variant, on new seeds) run every window. ``layers`` adds config
        overrides per dataset."""
        from tune.launcher import LaunchOptions  # noqa: PLC0415 (the launcher imports the trainable)

        if not variants or not datasets:
            return
        sub = self.space.model_copy(update={
            "name": stage,
            "variants": variants,
            "datasets": {d: deep_merge(self.space.datasets[d], (layers or {}).get(d, {}))
                         for d in datasets},
            "seeds": seeds or self.space.seeds,
            "stopping": self.space.stopping.model_copy(update={
                "enabled": True, "controls": [str(self.folder / "S0")],
                "min_gain": self.options.rules.min_gain})
            if futility and self.options.stopping and not stage.startswith("S0")
            else self.space.stopping,
        })
        path = self.folder / "stages" / f"{stage}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(sub.model_dump(mode="json"), sort_keys=False))
        experiment = self.folder / stage
        done = experiment.exists() and can_restore(str(experiment))
        self.decide(f"{stage}: {'resuming' if done else 'running'} {', '.join(variants)} on "
                    f"{', '.join(datasets)}, seeds {sub.seeds}")
        report = self.launcher(path, LaunchOptions(
            address=self.options.address, storage=str(self.folder), name=stage, resume=done,
            data_dir=self.options.data_dir, cache_dir=self.options.cache_dir))
        if report is not None and report.unfinished:  # Ctrl+C: Tune saves and returns
            self.decide(f"{stage}: interrupted with {report.unfinished} of {report.trials} "
                        "trials unfinished; the campaign stops here")
            raise StageInterrupted(f"stage {stage} was interrupted before its trials finished; "
                                   "continue the campaign with --resume")
        self.stages.append(str(experiment))

    def decide(self, line: str) -> None:
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        self.decisions.append(line)
        print(f"[campaign] {line}", flush=True)
        with (self.folder / LOG_FILE).open("a") as handle:
            handle.write(f"{stamp} {line}\n")

    def judge(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Variant table and verdicts over every stage so far (each stage is read once)."""
        frames = []
        for index, stage in enumerate(self.stages):
            if stage not in self._loaded:
                self._loaded[stage] = load_trials([stage])
            frames.append(self._loaded[stage].assign(experiment_index=index))
        trials = pd.concat(frames, ignore_index=True)
        variants = variant_table(trials, self.options.rules)
        return variants, verdicts(variants, self.options.rules)

    # ------------------------------------------------------------------ the plan

    def by_direction(self) -> dict[Direction, list[str]]:
        """Variant names of the space per direction, in declared order."""
        first = next(iter(self.space.datasets))
        groups: dict[Direction, list[str]] = {}
        for name in self.space.variants:
            direction = self.space.trial_config(name, first).direction
            groups.setdefault(direction, []).append(name)
        return groups

    def pick(self, names: list[str]) -> dict[str, dict]:
        return {name: self.space.variants[name] for name in names}

    def first(self, names: list[str]) -> list[str]:
        """A direction's first experiments: as many as it takes to judge it ineffective."""
        return names[:self.options.rules.ineffective_run]

    def expand(self, direction: Direction, names: list[str], datasets: list[str],
               first_ran: bool = False) -> None:
        """The first experiments of a direction (unless ``first_ran``: they ran in the shared
        stage), then the rest on the datasets where it is not ineffective."""
        if not first_ran:
            self.run_stage(f"{direction}-first", self.pick(self.first(names)), datasets)
        rest = names[len(self.first(names)):]
        if not rest or not datasets:
            return
        _, table = self.judge()
        open_on = []
        for dataset in datasets:
            row = table[(table["direction"] == direction) & (table["dataset"] == dataset)]
            if not row.empty and bool(row["ineffective"].iloc[0]):
                self.decide(f"{direction} on {dataset}: ineffective "
                            f"({row['ineffective_pair'].iloc[0]} each gain < "
                            f"{100 * self.options.rules.min_gain:g}%); {', '.join(rest)} not run")
            else:
                open_on.append(dataset)
        self.run_stage(f"{direction}-rest", self.pick(rest), open_on)

    def reproduce(self, direction: Direction,
                  controls: dict[BackboneRegime, list[str]]) -> None:
        """Extra seeds for a best variant that gained but is not reproduced yet."""
        _, table = self.judge()
        rules = self.options.rules
        rows = table[(table["direction"] == direction) & table["best_variant"].astype(bool)]
        for row in rows.itertuples():
            if row.reproduced or not row.gain >= rules.min_gain or row.ineffective:
                continue
            seeds = list(range(max(self.space.seeds) + 1,
                               max(self.space.seeds) + 1 + self.options.extra_seeds))
            best = row.best_variant
            # the control joins unless S0's control seeds already cover these seeds
            covered = set(self.space.seeds) | set(range(self.options.control_seeds))
            control = [] if set(seeds) <= covered else controls.get(self._regime_of(best), [])
            self.decide(f"{direction} on {row.dataset}: {best} needs reproduction "
                        f"({row.reproductions} seeds beat the control); adding seeds {seeds}")
            self.run_stage(f"{direction}-repro-{row.dataset}",
                           {**self.pick(control), **self.pick([best])}, [row.dataset], seeds,
                           futility=False)

    def choose_baselines(self, names: list[str], datasets: list[str],
                         regimes: set[bool]) -> dict[str, list[str]]:
        """The strongest CHRC-free baseline per dataset and backbone regime (frozen, or learning
        online: ``regimes`` holds those with a control), chosen as the rules choose it: a control
        is compared only with baselines of its own regime (``analysis.rules._best_baseline``).

        Where a regime has several candidates (the online learning rates), the choice comes from
        selection runs that stop where it is made (stage ``S0-select``): the warm-up
        (validation) MSE where the dataset warms up (``online.test_stream: false``), else the
        first ``selection_share`` of the test stream (``online.test_share``); a regime with one
        candidate (the frozen backbone) needs none. Only the chosen ones then stream the whole
        test; the others are never a verdict's reference."""
        kinds: dict[bool, list[str]] = {}
        for name in names:
            if (frozen := self._regime_of(name).frozen) in regimes:
                kinds.setdefault(frozen, []).append(name)
        contested = [name for group in kinds.values() if len(group) > 1 for name in group]
        share = self.options.rules.selection_share
        warms = {d: self.space.trial_config(names[0], d).online.warmup for d in datasets
                 } if names else {}
        runs = pd.DataFrame()
        if contested:
            layers = {d: {"online": {"test_stream": False} if warms[d] else {"test_share": share}}
                      for d in datasets}
            self.run_stage("S0-select", self.pick(contested), datasets,
                           self.seeds_for(contested), futility=False, layers=layers)
            runs = load_trials([self.stages[-1]])
            runs = runs[runs["status"] == "TERMINATED"]
        chosen: dict[str, list[str]] = {d: [] for d in datasets}
        for frozen, group in kinds.items():
            regime = "frozen backbone" if frozen else "learning backbone"
            for dataset in datasets:
                if len(group) == 1:
                    chosen[dataset].append(group[0])
                    self.decide(f"baseline on {dataset} ({regime}): {group[0]}, the only "
                                "CHRC-free variant of that regime; it runs the whole test stream")
                    continue
                rows = runs[(runs["dataset"] == dataset) & runs["variant"].isin(group)]
                score = (rows["warmup_mse"] if warms[dataset] else rows["mse"]
                         ).groupby(rows["variant"]).mean().dropna()
                if score.empty:
                    raise AnalysisError(f"S0-select on {dataset}: no baseline of the {regime} "
                                        "has a validation MSE to choose on (every one failed)")
                best = str(score.idxmin())
                chosen[dataset].append(best)
                how = ("validation MSE" if warms[dataset]
                       else f"MSE of the first {100 * share:g}% of test")
                self.decide(f"baseline on {dataset} ({regime}): {best} chosen on {how} ("
                            + ", ".join(f"{v} {m:.4f}" for v, m in score.sort_values().items())
                            + "); only it runs the whole test stream")
        return chosen

    def seeds_for(self, names: list[str]) -> list[int] | None:
        """The space's first seed alone when none of these variants' numbers depend on the seed
        (:attr:`TrialConfig.seed_matters`: the CHRC-free baselines), else None (every seed)."""
        if any(self.space.trial_config(n, d).seed_matters
               for n in names for d in self.space.datasets):
            return None
        return self.space.seeds[:1]

    def _regime_of(self, variant: str) -> BackboneRegime:
        first = next(iter(self.space.datasets))
        return self.space.trial_config(variant, first).backbone_regime

    def run(self) -> Path:
        groups = self.by_direction()
        datasets = list(self.space.datasets)
        controls: dict[BackboneRegime, list[str]] = {}
        for name in groups.get(Direction.CONTROL, []):
            controls.setdefault(self._regime_of(name), []).append(name)
        if not controls:
            raise ConfigError(f"{self.space.source}: a campaign needs a control variant (CHRC "
                              "on, no direction switched on), e.g. p2p7p8")
        chosen = self.choose_baselines(groups.get(Direction.BASELINE, []), datasets,
                                       {regime.frozen for regime in controls})
        self.run_stage("S0", self.pick(groups[Direction.CONTROL]), datasets)
        extra = sorted(set(range(self.options.control_seeds)) - set(self.space.seeds))
        # A baseline whose numbers do not depend on the seed needs one run per dataset, on any
        # seed: where it was chosen on every dataset and the controls need exactly one further
        # seed, it runs on that seed beside them (one stage keeps every worker busy: the whole
        # Weather stream takes the better part of an hour); otherwise on the first seed alone.
        baselines = list(dict.fromkeys(b for d in datasets for b in chosen[d]))
        joining = [b for b in baselines
                   if len(extra) == 1 and self.seeds_for([b]) is not None
                   and all(b in chosen[d] for d in datasets)]
        for baseline in baselines:
            if baseline not in joining:  # on the datasets that chose it
                self.run_stage(f"S0-{baseline}", self.pick([baseline]),
                               [d for d in datasets if baseline in chosen[d]],
                               self.seeds_for([baseline]))
        if extra:  # the noise floor needs that many control seeds
            self.run_stage("S0-seeds", self.pick(joining + groups[Direction.CONTROL]), datasets,
                           extra)

        # The first experiments of every direction that no gate holds back (A1, B1, B3, B2)
        # depend on S0 alone: one stage runs them all, so that no worker idles while another
        # direction's slowest trial (a Weather one) ends its stage.
        ungated = [d for d in SEQUENCE if d is not Direction.A2 and groups.get(d)]
        self.run_stage(FIRSTS, self.pick([n for d in ungated for n in self.first(groups[d])]),
                       datasets)
        for direction in SEQUENCE:
            names = groups.get(direction, [])
            if not names:
                continue
            active = datasets
            if direction is Direction.A2:
                _, table = self.judge()
                active = []
                for dataset in datasets:
                    gate = a2_gate(table, dataset, self.options.rules)
                    self.decide(f"gate A2 on {dataset}: {'open' if gate.open else 'closed'} "
                                f"({gate.reason})")
                    if gate.open:
                        active.append(dataset)
            self.expand(direction, names, active, first_ran=direction in ungated)
            self.reproduce(direction, controls)

        variants, _ = self.judge()
        for dataset in datasets:
            gate = s3_pair(variants, dataset, self.options.rules)
            self.decide(f"gate S3 on {dataset}: {'open' if gate.open else 'closed'} "
                        f"({gate.reason})")
            if gate.open:
                a, b = gate.variants
                combined = deep_merge(self.space.variants[a], self.space.variants[b])
                self.run_stage(f"S3-{dataset}", {f"s3_{a}+{b}": combined}, [dataset])

        report = self.folder / "report.html"
        self.decide(f"{FINISHED}every stage has run")  # before the report, which reads the log
        write_report(self.stages, report, self.options.rules, self.space)
        self.decide(f"report: {report}")
        return report


def run_campaign(space_path: str | os.PathLike, options: CampaignOptions,
                 launcher: Callable[..., Any] | None = None) -> Path:
    """Run (or with ``options.resume`` continue) the staged campaign; return the report path."""
    if "://" in options.storage:
        raise ConfigError(f"--storage {options.storage}: a campaign keeps its stages and log in "
                          "a folder (a local path or a shared mount), not a URI")
    space = load_space(space_path)
    if space.search.kind != "grid":
        raise ConfigError(f"{space.source}: a campaign runs grid spaces (search.kind: grid)")
    folder = Path(options.storage).expanduser().resolve() / (options.name or space.name)
    if (folder / LOG_FILE).exists() and not options.resume:
        raise AnalysisError(f"{folder} already holds a campaign: pass --resume to continue it, "
                            "or --name NAME for a new one")
    if options.resume and not (folder / LOG_FILE).exists():
        raise AnalysisError(f"nothing to resume at {folder}: start the campaign first")
    folder.mkdir(parents=True, exist_ok=True)
    if launcher is None:
        from tune.launcher import launch as launcher
    campaign = Campaign(space, folder, options, launcher)
    campaign.decide(f"{'resuming' if options.resume else 'starting'} campaign {folder.name} "
                    f"from {space.source}")
    return campaign.run()
