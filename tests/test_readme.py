"""README's Python snippets run as written, in README's order, after a tiny demo in a fresh
folder (`./dev.sh demo` scaled down: 4 mm instead of 2 mm, so the sizes README spells out, the
model's input shape, are scaled with it). What a snippet's comments show is checked where it
is a value: the model's metadata; the plug-in's artifact keys and the champion comparison are
used by the snippets themselves. A block preceded by `<!-- not run by tests/test_readme.py: why -->`
is left out (the webhook needs a public https address)."""

from __future__ import annotations

import ast
import os
import re
import textwrap

import matplotlib.pyplot as plt
import mlflow
import pytest

from .helpers import REPO

SKIP_MARK = "<!-- not run by tests/test_readme.py"
SCALED = {"[1, 91, 109, 91]": "[1, 46, 55, 46]", "(1, 1, 91, 109, 91)": "(1, 1, 46, 55, 46)"}  # 2 mm grid -> 4 mm


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block (indented ones too), in order, without those
    marked as not run."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```python\s*$", lines[i])
        if not opening:
            i += 1
            continue
        indent, start = opening.group(1), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```" and lines[j].startswith(indent))
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        if SKIP_MARK not in previous:
            blocks.append((start + 1, textwrap.dedent("\n".join(lines[start + 1:end]))))
        i = end + 1
    return blocks


def scaled(code: str) -> str:
    for old, new in SCALED.items():
        code = code.replace(old, new)
    return code


def comment_after(text: str, code: str) -> str:
    """The comment lines right below the first line holding ``code``, joined (README shows a
    snippet's result that way)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if code in line and not line.lstrip().startswith("#"))
    shown = []
    for line in lines[start + 1:]:
        if not line.startswith("#"):
            break
        shown.append(line[1:].strip())
    return " ".join(shown)


def test_the_blocks_are_found():
    text = (REPO / "README.md").read_text()
    blocks = python_blocks(text)
    assert len(blocks) >= 6 and text.count("```python") == len(blocks) + text.count(SKIP_MARK)
    assert any("FeatureMapDisplay.from_model" in code for _, code in blocks)


@pytest.mark.slow
def test_every_python_snippet_in_readme_runs(tracking, tmp_path, monkeypatch):
    from heimer_mlflow.demo import run_demo

    monkeypatch.chdir(tmp_path)
    run_demo(workdir="heimer-demo", subjects=12, eval_subjects=12, epochs=2, voxel_size=4.0, progress=False)
    client = mlflow.MlflowClient()
    namespace: dict = {}
    try:
        for line, code in python_blocks((REPO / "README.md").read_text()):
            try:
                exec(compile(scaled(code), f"README.md:{line}", "exec"), namespace)  # noqa: S102 - README's own code
            except Exception as error:
                raise AssertionError(f"README.md line {line}: {type(error).__name__}: {error}") from error
            finally:
                plt.close("all")
    finally:
        for key in ("heimer.data", "heimer.options"):  # no opted-in model for the watcher tests of this session
            client.delete_registered_model_tag("heimer-demo", key)
        while mlflow.active_run():
            mlflow.end_run()
    # the metadata comment under the demo's first snippet is what the call returns
    metadata = mlflow.models.get_model_info("models:/heimer-demo@champion").metadata["heimer"]
    assert ast.literal_eval(comment_after(scaled((REPO / "README.md").read_text()), '.metadata["heimer"]')) == metadata
    # the plug-in snippet found the champion by content, through a data frame of relative paths
    assert "vs_champion_roc_auc_diff" in namespace["challenger_result"].metrics
    assert namespace["result"].run_id and os.path.isdir(tmp_path / "heimer-demo" / "cohort-eval")
