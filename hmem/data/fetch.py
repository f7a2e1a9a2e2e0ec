"""``hmem data fetch``: the public benchmark files, downloaded, verified and placed atomically.

Each file comes from its canonical public location (or ``--mirror URL``, where a site keeps its
own copy as ``URL/<file name>``) and must match a pinned SHA-256 of its content, the same
content as the files the project is tested with. A download goes to ``<name>.part`` first and is
renamed into place only once it is complete and verified, so an interrupted or corrupt download
never leaves a file that looks complete. After a dropped connection the download resumes where
it stopped (an HTTP range request) or starts again if the server cannot resume, up to
``retries`` times, saying so each time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from hmem.errors import HmemError

log = logging.getLogger(__name__)

_CHUNK = 1 << 16


class FetchError(HmemError):
    """A benchmark file could not be fetched or failed its checksum."""


@dataclass(frozen=True)
class Remote:
    """One public benchmark file."""

    name: str  # as --dataset names it
    filename: str  # what the loader looks for in a data directory
    url: str  # its canonical public location
    sha256: str  # of the file's content (for a .csv.gz in shared/data: of the decompressed file)


#: Files with a pinned checksum. ETTh1, ETTh2 and ETTm2 share ETTm1's source, but no copy of
#: them has been verified here, so no checksum is pinned and they are not offered.
REMOTES = {
    remote.name: remote
    for remote in (
        Remote("ETTm1", "ETTm1.csv",
               "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTm1.csv",
               "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e"),
        Remote("Weather", "weather.csv",
               "https://huggingface.co/datasets/thuml/Time-Series-Library/resolve/main/weather/"
               "weather.csv",
               "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63"),
    )
}

Say = Callable[[str], None]


def _source(remote: Remote, mirror: str | None) -> str:
    return remote.url if mirror is None else f"{mirror.rstrip('/')}/{remote.filename}"


def _download(url: str, part: Path, timeout: float) -> None:
    """Append to ``part`` from where it stops (a range request), or rewrite it if the server
    sends the whole file."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        resumed = have and response.status == 206
        expected = response.headers.get("Content-Length")
        written = 0
        with open(part, "ab" if resumed else "wb") as handle:
            while block := response.read(_CHUNK):
                handle.write(block)
                written += len(block)
            handle.flush()
            os.fsync(handle.fileno())
        if expected is not None and written != int(expected):
            raise HTTPException(f"connection closed after {written} of {expected} bytes")


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch_one(remote: Remote, folder: Path, *, mirror: str | None = None, retries: int = 3,
              timeout: float = 60.0, backoff: float = 2.0, say: Say = print) -> Path:
    """Download, verify and place one file; returns its path. An already verified file is kept."""
    target = folder / remote.filename
    if target.exists() and _digest(target) == remote.sha256:
        say(f"{remote.name}: {target} is already there (SHA-256 verified)")
        return target
    url, part = _source(remote, mirror), folder / f"{remote.filename}.part"
    for attempt in range(1, retries + 1):
        try:
            _download(url, part, timeout)
            break
        except urllib.error.HTTPError as err:
            if err.code == 416:  # the range asked for starts past the end: start again
                part.unlink(missing_ok=True)
            elif 400 <= err.code < 500:
                raise FetchError(f"{remote.name}: {url} answered HTTP {err.code} "
                                 f"({err.reason}); check the URL or --mirror") from None
            failure = f"HTTP {err.code}"
        except (urllib.error.URLError, HTTPException, OSError) as err:
            failure = str(getattr(err, "reason", err))
        if attempt == retries:
            raise FetchError(f"{remote.name}: {url} failed {retries} times (last: {failure}); "
                             f"{part} keeps what arrived and the next run resumes from it")
        have = part.stat().st_size if part.exists() else 0
        say(f"{remote.name}: network error ({failure}) after {have} bytes; retrying "
            f"({attempt + 1}/{retries})")
        time.sleep(backoff * attempt)
    got = _digest(part)
    if got != remote.sha256:
        part.unlink()
        raise FetchError(f"{remote.name}: the file from {url} has SHA-256 {got}, expected "
                         f"{remote.sha256}: refused and deleted (a corrupt download, or the "
                         f"source changed); try again, or use --mirror with a verified copy")
    os.replace(part, target)
    say(f"{remote.name}: {target} ({target.stat().st_size} bytes, SHA-256 verified)")
    return target


def fetch(names: list[str], folder: str | os.PathLike, *, mirror: str | None = None,
          retries: int = 3, timeout: float = 60.0, backoff: float = 2.0,
          say: Say = print) -> list[Path]:
    """Fetch every named dataset into ``folder`` (created if needed)."""
    unknown = [name for name in names if name not in REMOTES]
    if unknown:
        raise FetchError(f"no public source is pinned for {', '.join(unknown)}: choose from "
                         f"{', '.join(REMOTES)}")
    target = Path(folder).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    return [fetch_one(REMOTES[name], target, mirror=mirror, retries=retries, timeout=timeout,
                      backoff=backoff, say=say) for name in names]
