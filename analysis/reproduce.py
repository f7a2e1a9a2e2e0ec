"""The commands that reproduce a report's numbers, read off the experiments themselves.

Each experiment folder records how it was launched (``hmem_launch.json``: the search space's
file and the ``--set`` overrides); a stage of a staged campaign sits in a campaign folder whose
``campaign.log`` names the space the campaign ran. A report lists one command per campaign and
per plain experiment, then the report command itself, so that a reader can rerun everything it
shows with the benchmark files found through ``$HMEM_DATA_DIR``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from analysis.campaign_log import CampaignLog, campaigns, stage_of
from analysis.loading import flatten, read_launch_record
from hmem.errors import HmemError
from hmem.records import LaunchRecord
from hmem.spaces import CAMPAIGN_STORAGE, DEFAULT_STORAGE, load_space


def _in_repository(path: str) -> str:
    """A space file as a path from the repository root (``search_spaces/...``) when it is one
    of the shipped spaces, wherever the checkout that launched it was."""
    marker = "search_spaces/"
    return path[path.index(marker):] if marker in path else path


def _selection(record: LaunchRecord, space_file: str) -> str:
    """``--variants/--datasets/--seeds`` where the launch ran a selection of its space file (the
    record keeps the space as selected); all three where the file cannot be read here."""
    launched = record.space
    try:
        declared = load_space(space_file).model_dump(mode="json")
    except HmemError:
        declared = {}
    flags = ""
    for key, flag in (("variants", "--variants"), ("datasets", "--datasets")):
        if list(launched[key]) != list(declared.get(key, {})):
            flags += f" {flag} {','.join(launched[key])}"
    if launched["seeds"] != declared.get("seeds"):
        flags += f" --seeds {','.join(str(seed) for seed in launched['seeds'])}"
    return flags


def _storage(location: str, default: str) -> str:
    """`` --storage DIR`` where the experiment lies elsewhere than its command would put it by
    default, so that the report command that follows finds what the commands made."""
    location = location.rstrip("/")
    parent = location.rsplit("/", 1)[0] if "/" in location else "."
    if "://" in parent or "://" in default:
        same = parent == default.rstrip("/")
    else:  # relative paths are relative to where the report was made, as the commands will be
        same = Path(parent).resolve() == Path(default).resolve()
    return "" if same else f" --storage {shlex.quote(parent)}"


def commands(experiments: Sequence[str], tuning: Sequence[str] = (),
             report: str | None = None,
             logs: Sequence[CampaignLog] | None = None) -> list[str]:
    """Shell commands, in order: launch every experiment (a campaign once), then the report.
    ``logs``: the campaigns the folders are stages of, when the caller has read them already."""
    locations = [*tuning, *experiments]
    logs = campaigns(locations) if logs is None else logs
    lines: list[str] = []
    for location in locations:
        campaign = stage_of(location, logs)
        if campaign is not None:
            name, space = campaign.name, _in_repository(campaign.space)
            line = (f"hmem campaign {space}"
                    + (f" --name {name}" if name != Path(space).stem else "")
                    + _storage(str(campaign.folder), CAMPAIGN_STORAGE))
        else:
            record = read_launch_record(location)
            if record is None:
                lines.append(f"# {location}: no {Path(location).name}/hmem_launch.json, "
                             "launched by hand")
                continue
            name = Path(location.rstrip("/")).name
            space = _in_repository(record.space_source)
            line = (f"hmem tune launch {space} --name {name}{_selection(record, space)}"
                    + _storage(location, record.space.get("storage") or DEFAULT_STORAGE))
            for key, value in flatten(record.overrides).items():
                line += f" --set {shlex.quote(f'{key}={value}')}"
        if line not in lines:
            lines.append(line)
    if report:
        lines.append(report)
    return lines
