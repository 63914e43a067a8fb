"""What a reviewer sees in the MLflow UI, checked in a real browser (headless system Chromium,
tests/helpers/browser.py) against a real `mlflow server`: two versions of a model evaluated, the
first as champion. The registered model's versions list previews each description with the
verdict in words (never our hidden marker); the version page shows the summary block with the
recommendation and links; following the report links opens the report in the run's artifact
viewer (the HTML report shows its Model Facts page there); the map viewer draws.

Screenshots go to ``HEIMER_SCREENSHOTS`` when set (to look at them), else to the test's folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heimer_mlflow import summary

from .helpers.browser import chromium_page
from .helpers.cohorts import atlas_args
from .helpers.servers import tail, tracking_server, using
from .helpers.tracking import register_tiny_model, subprocess_env

FAST = ["--workers", "0", "--bootstrap", "100"]
UI_TIMEOUT_MS = 60_000  # the React app renders after its bundles load; generous on two busy cores


def _evaluate(server, tmp_path: Path, name: str, version: str, cohort: Path) -> None:
    env = {**subprocess_env(tmp_path), "MLFLOW_TRACKING_URI": server.url}
    done = subprocess.run([sys.executable, "-m", "heimer_mlflow", "-q", "evaluate", f"models:/{name}/{version}",
                           "--data", str(cohort), *atlas_args(cohort), *FAST, "--experiment", "browser-evals"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("HEIMER_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _follow(page, server, name: str, version: str, label):
    """Click the block's link ``label`` on the version page; MLflow opens Markdown links in a new
    tab: that tab, loaded."""
    page.goto(f"{server.url}/#/models/{name}/versions/{version}")
    page.get_by_text(re.compile(r"^Recommendation:")).first.wait_for()
    with page.context.expect_page() as opened:
        page.get_by_role("link", name=label, exact=isinstance(label, str)).first.click()
    tab = opened.value
    tab.set_default_timeout(UI_TIMEOUT_MS)
    tab.wait_for_load_state()
    return tab


def _frame_with(tab, words: str, timeout_s: float = 60) -> str:
    """The text of the first frame (the artifact viewer's sandboxed preview) that shows ``words``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for frame in tab.frames[1:]:
            try:
                text = frame.locator("body").inner_text(timeout=2000)
            except Exception:  # noqa: BLE001 - a frame still loading or gone
                continue
            if words in text:
                return text
        tab.wait_for_timeout(500)
    raise AssertionError(f"no frame of {tab.url} shows {words!r}; frames: {[f.url[:80] for f in tab.frames]}")


def _canvas_width(tab, timeout_s: float = 60) -> float:
    """The drawn width of the first canvas in any frame (brainsprite draws the slices into one)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for frame in tab.frames[1:]:
            try:
                if frame.locator("canvas").count():
                    box = frame.locator("canvas").first.bounding_box(timeout=2000)
                    if box and box["width"] > 0:
                        return box["width"]
            except Exception:  # noqa: BLE001 - a frame still loading or gone
                continue
        tab.wait_for_timeout(500)
    raise AssertionError(f"no canvas drawn in {tab.url}; frames: {[f.url[:80] for f in tab.frames]}")


@pytest.mark.server
@pytest.mark.slow
def test_reviewer_sees_the_verdict_block_links_and_report_in_the_mlflow_ui(synthetic_cohort, tmp_path):
    name = "browser-model"
    shots = _shots(tmp_path)
    with tracking_server("sqlite", tmp_path / "server") as server:
        try:
            with using(server) as client:
                champion = register_tiny_model(name, seed=1)
                challenger = register_tiny_model(name, seed=2)
            _evaluate(server, tmp_path, name, champion, synthetic_cohort)
            with using(server) as client:
                client.set_registered_model_alias(name, "champion", champion)
                client.update_model_version(name, champion, description=client.get_model_version(name, champion)
                                            .description + "\n\nNotes by the team: trained on site A.")
            _evaluate(server, tmp_path, name, challenger, synthetic_cohort)
            with using(server) as client:
                description = client.get_model_version(name, challenger).description
                tags = client.get_model_version(name, challenger).tags
                run = client.get_run(tags["heimer.evaluation_run_id"])
            headline = description.splitlines()[0]
            assert re.match(r"^(pass|review) · AUC ", headline) and f"vs champion v{champion}" in headline, headline
            assert headline.endswith(summary.HEADLINE_END)
            experiment, run_id = run.info.experiment_id, run.info.run_id
            assert tags["heimer.report"].startswith("mlflow-artifacts:")  # machine-readable: the artifact URI
            assert tags["heimer.report_page"] == f"#/experiments/{experiment}/runs/{run_id}/artifacts/report/{name}-v{challenger}.pdf"

            with chromium_page(viewport=(1600, 1100)) as page:
                page.set_default_timeout(UI_TIMEOUT_MS)
                # 1. the registered model's versions list: each description previews its verdict
                page.goto(f"{server.url}/#/models/{name}")
                preview = page.get_by_text(re.compile(r"^(pass|review) · AUC "))
                preview.first.wait_for()
                page.screenshot(path=str(shots / "1-versions-list.png"), full_page=True)
                previews = preview.all_inner_texts()
                assert len(previews) == 2, previews  # one per version, each starting with its verdict
                assert "<!--" not in page.inner_text("body")

                # 2. the version page: the block renders, with the recommendation and links
                page.goto(f"{server.url}/#/models/{name}/versions/{challenger}")
                page.get_by_text("heimer-mlflow evaluation", exact=True).first.wait_for()
                page.get_by_text(re.compile(r"^Recommendation:")).first.wait_for()
                page.screenshot(path=str(shots / "2-version-page.png"), full_page=True)
                text = page.inner_text("body")
                assert "<!--" not in text and "Verdict:" in text and f"vs champion v{champion}" in text
                for label in ("Evaluation run", "PDF report", "HTML report", f"champion v{champion}"):
                    assert page.get_by_role("link", name=label).count() >= 1, label

                # 3. the PDF report link (the block's links open a new tab) shows the run's artifact
                # viewer on the PDF
                tab = _follow(page, server, name, challenger, "PDF report")
                assert re.search(rf"#/experiments/{experiment}/runs/{run_id}/artifacts/report/{name}-v{challenger}\.pdf$",
                                 tab.url), tab.url
                tab.get_by_text(f"report/{name}-v{challenger}.pdf").first.wait_for()
                tab.wait_for_timeout(3000)  # the PDF preview draws its first page
                tab.screenshot(path=str(shots / "3-pdf-in-artifact-viewer.png"))
                tab.close()

                # 4. the HTML report link: the report's Model Facts page, in the viewer's frame
                tab = _follow(page, server, name, challenger, "HTML report")
                facts = _frame_with(tab, "Recommendation for the registry")
                tab.screenshot(path=str(shots / "4-html-report-in-artifact-viewer.png"))
                assert "Model Facts".upper() in facts.upper() and "Against the champion" in facts
                assert "Maps to scroll" in facts and "viewers/champion_v1_AD_mean.html" in facts  # listed in the report
                tab.close()

                # 5. a map viewer draws inside the artifact viewer (brainsprite's canvas, in a nested frame)
                tab = _follow(page, server, name, challenger, re.compile(r"^HiResCAM, AD mean$"))
                width = _canvas_width(tab)
                tab.screenshot(path=str(shots / "5-map-viewer.png"))
                assert width > 100, width
                tab.close()

                # 6. the champion link goes to the champion's version page (people's text kept there)
                tab = _follow(page, server, name, challenger, f"champion v{champion}")
                assert tab.url.endswith(f"#/models/{name}/versions/{champion}"), tab.url
                tab.get_by_text("Notes by the team: trained on site A.").first.wait_for()
                tab.close()
        except BaseException:
            print(f"--- server log ({server.log}):\n{tail(server.log, 6000)}")
            raise
