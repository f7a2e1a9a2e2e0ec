"""A staged campaign's folder read back: its stages in the order they ran, its decisions, and
whether it has finished.

``hmem campaign`` keeps one line per decision in ``campaign.log`` (``TIME TEXT``) and runs each
stage as an experiment folder beside it. A campaign runs for hours and may span sessions, so its
report is often written while it still runs: given the campaign folder, a report reads every
stage that has started, lists the decisions, and says whether the campaign has finished, so a
report published half-way says so instead of passing for the final one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LOG_FILE = "campaign.log"
_STARTED = re.compile(r"^(?:starting|resuming) campaign (\S+) from (\S+)")
_STAGE = re.compile(r"^([\w.+-]+): (?:running|resuming) ")
FINISHED = "finished: "  # the line a campaign logs once every stage has run
_REPORT = "report: "  # logged after it (and, by campaigns before FINISHED existed, alone)


@dataclass(frozen=True)
class Decision:
    time: str  # ISO time the campaign logged it
    text: str


@dataclass(frozen=True)
class CampaignLog:
    """What ``campaign.log`` says about the campaign in ``folder``."""

    folder: Path
    name: str
    space: str  # the space file the campaign ran, as it was given
    decisions: tuple[Decision, ...]
    stages: tuple[str, ...]  # stage names in the order they first started
    finished: bool  # the last start or resume ran to the report

    @property
    def stage_folders(self) -> list[Path]:
        """The stages' experiment folders that exist, in the order they ran."""
        return [self.folder / s for s in self.stages if (self.folder / s).is_dir()]

    def status(self) -> str:
        """One sentence: finished, or where it stands."""
        if not self.decisions:
            return f"Campaign {self.name}: its log is empty."
        last = self.decisions[-1]
        if self.finished:
            return (f"Campaign {self.name} ({self.space}) finished at {last.time}: "
                    f"{len(self.stages)} stages.")
        return (f"Campaign {self.name} ({self.space}) has NOT finished: this report covers the "
                f"{len(self.stages)} stages started so far, the last of which may be partial; "
                f"its log ends at {last.time} with \"{last.text}\". Verdicts may change as "
                "the remaining stages run.")


def read_campaign(folder: str | os.PathLike) -> CampaignLog | None:
    """The campaign kept in ``folder``, or None when it holds no ``campaign.log``."""
    folder = Path(folder)
    log = folder / LOG_FILE
    if "://" in str(folder) or not log.is_file():
        return None
    name, space = folder.name, ""
    decisions, stages, finished = [], [], False
    for line in log.read_text().splitlines():
        time, _, text = line.partition(" ")
        if not text:
            continue
        decisions.append(Decision(time, text))
        if started := _STARTED.match(text):
            name, space, finished = started.group(1), started.group(2), False
        elif stage := _STAGE.match(text):
            if stage.group(1) not in stages:
                stages.append(stage.group(1))
        elif text.startswith((FINISHED, _REPORT)):
            finished = True
    return CampaignLog(folder, name, space, tuple(decisions), tuple(stages), finished)


def expand(experiments: Iterable[str | os.PathLike]) -> list[str]:
    """Experiment folders, with each campaign folder replaced by its stages in the order they
    ran (each folder once)."""
    out: list[str] = []
    for location in experiments:
        campaign = read_campaign(location)
        found = [str(s) for s in campaign.stage_folders] if campaign else [str(location)]
        out += [f for f in found if f not in out]
    return out


def stage_of(location: str | os.PathLike,
             logs: Iterable[CampaignLog]) -> CampaignLog | None:
    """The campaign among ``logs`` that the experiment at ``location`` is a stage of, if any: a
    stage is a folder of its campaign's folder (remote experiments are never stages)."""
    if "://" in str(location):
        return None
    return next((log for log in logs if log.folder == Path(location).parent), None)


def campaigns(experiments: Iterable[str | os.PathLike]) -> list[CampaignLog]:
    """The campaigns the experiment folders are stages of, each once, in order of appearance;
    each campaign's log is read once, however many of its stages are given."""
    read: dict[Path, CampaignLog | None] = {}
    for location in experiments:
        if "://" in str(location):
            continue
        folder = Path(location).parent
        if folder not in read:
            read[folder] = read_campaign(folder)
    return [campaign for campaign in read.values() if campaign is not None]
