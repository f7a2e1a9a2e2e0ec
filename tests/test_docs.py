"""What the README and the published results link to is in the repository: a file that exists
only on the machine that wrote it (git-ignored by mistake) is a broken link for every reader."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s#]+)\)")


def _tracked() -> set[str]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell tracked files from local ones")
    return set(listed.splitlines())


def _relative_links(markdown: Path) -> list[str]:
    links = LINK.findall(markdown.read_text())
    return [(markdown.parent / link).resolve().relative_to(REPO).as_posix()
            for link in links if "://" not in link and not link.startswith("mailto:")]


def test_readme_and_published_results_link_only_to_tracked_files():
    tracked = _tracked()
    documents = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    assert any("docs/results" in link for link in _relative_links(REPO / "README.md"))
    for document in documents:
        for link in _relative_links(document):
            assert link in tracked or any(path.startswith(f"{link}/") for path in tracked), (
                f"{document.relative_to(REPO)} links to {link}, which is not in the repository")
