"""The design lives in the repository: nothing cites a file outside it (the founding notes that
stayed outside, or any ../ path), and every relative link in the README and in docs/ opens a file
of the repository, at a heading that exists when the link names one (its own headings too)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .helpers import REPO

# Built from parts, so that this file does not cite what it looks for.
OUTSIDE = [re.compile(pattern) for pattern in (
    r"\.\./" + "shared",  # the folder beside the checkout the design once lived in
    r"\b" + "DESIGN" + r"\.md\b",
    r"\b" + "COHORT" + r"\.md\b",
)]  # fmt: skip
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".j2", ".css", ".html", ".txt", ".sh", ".cfg", ".ini"}
TEXT_NAMES = {"MLproject", "NOTICE", "dev.sh", "run", ".gitignore"}
SKIPPED_FOLDERS = {".git", ".venv", "venv", "__pycache__", "build", "dist", ".pytest_cache", "mlruns", "heimer-demo"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def repository_files() -> list[Path]:
    """The files git tracks (or would: untracked, not ignored); a walk when there is no git."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                                capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
        return [REPO / name for name in listed if name and (REPO / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in REPO.rglob("*") if p.is_file() and not SKIPPED_FOLDERS & set(p.relative_to(REPO).parts)]


def text_files() -> list[Path]:
    return [p for p in repository_files() if p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES]


def test_nothing_outside_docs_cites_a_file_outside_the_repository():
    files = text_files()
    assert REPO / "README.md" in files and REPO / "heimer_mlflow" / "evaluation.py" in files  # the walk sees them
    citations = []
    for path in files:
        if path.relative_to(REPO).parts[0] == "docs":
            continue  # docs/design.md may say where the design came from
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if any(pattern.search(line) for pattern in OUTSIDE):
                citations.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not citations, "cite docs/design.md or docs/cohort.md instead:\n" + "\n".join(citations)


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of a Markdown file's headings: lower case, punctuation dropped,
    spaces as hyphens (headings inside code blocks are not headings)."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6}\s+(.*)", line)):
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def relative_links(path: Path) -> list[str]:
    """The links to files (``docs/design.md``, ``../README.md#tests``) and to the document's own
    headings (``#tests``); not those with a scheme (https:, mailto:)."""
    return [target for target in LINK.findall(path.read_text(encoding="utf-8"))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # fmt: skip


@pytest.mark.parametrize("document", ["README.md", "docs/design.md", "docs/cohort.md"])
def test_relative_links_open_a_file_of_the_repository(document):
    path = REPO / document
    links = relative_links(path)
    assert links, f"{document} links to nothing in the repository"
    broken = []
    for target in links:
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.is_relative_to(REPO) or not linked.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{target}: {file_part} has no heading #{anchor}")
    assert not broken, f"{document}:\n" + "\n".join(broken)


def test_the_readme_links_both_design_documents():
    links = {target.partition("#")[0] for target in relative_links(REPO / "README.md")}
    assert {"docs/design.md", "docs/cohort.md"} <= links


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The patterns and the anchor rule catch a citation and a broken anchor (a check that cannot
    fail proves nothing)."""
    assert any(pattern.search("see ../" + "shared/" + "DESIGN" + ".md") for pattern in OUTSIDE)
    assert any(pattern.search("(the recipe is " + "COHORT" + ".md)") for pattern in OUTSIDE)
    assert not any(pattern.search("docs/design.md and docs/cohort.md") for pattern in OUTSIDE)
    assert "folder-layout-and-why" in heading_anchors("## Folder layout, and why\n```\n# not a heading\n```")
    assert "not-a-heading" not in heading_anchors("```\n# not a heading\n```")
