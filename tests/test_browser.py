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

            with chromium_page() as page:
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
                page.get_by_text("heimer-mlflow evaluation").first.wait_for()
                page.get_by_text(re.compile(r"^Recommendation:")).first.wait_for()
                page.screenshot(path=str(shots / "2-version-page.png"), full_page=True)
                text = page.inner_text("body")
                assert "<!--" not in text and "Verdict:" in text and f"vs champion v{champion}" in text
                for label in ("Evaluation run", "PDF report", "HTML report", f"champion v{champion}"):
                    assert page.get_by_role("link", name=label).count() >= 1, label

                # 3. the PDF report link opens the run's artifact viewer on the PDF
                page.get_by_role("link", name="PDF report").first.click()
                page.wait_for_url(re.compile(rf"#/experiments/{experiment}/runs/{run_id}/artifacts/report/"))
                page.get_by_text(f"{name}-v{challenger}.pdf").first.wait_for()
                page.wait_for_timeout(3000)  # the PDF preview draws its first page
                page.screenshot(path=str(shots / "3-pdf-in-artifact-viewer.png"), full_page=True)

                # 4. the HTML report link: the report's Model Facts page, in the viewer's frame
                page.goto(f"{server.url}/#/models/{name}/versions/{challenger}")
                page.get_by_role("link", name="HTML report").first.click()
                page.wait_for_url(re.compile(r"/artifacts/report/html/index\.html"))
                frame = page.frame_locator("iframe").first
                frame.get_by_text("Recommendation for the registry").first.wait_for()
                page.screenshot(path=str(shots / "4-html-report-in-artifact-viewer.png"), full_page=True)
                assert "Model Facts" in frame.locator("body").inner_text()

                # 5. a map viewer draws inside the artifact viewer (brainsprite's canvas)
                page.goto(f"{server.url}/#/models/{name}/versions/{challenger}")
                viewer = page.get_by_role("link", name=re.compile(r"mean$")).first
                viewer.click()
                page.wait_for_url(re.compile(r"/artifacts/viewers/"))
                canvas = page.frame_locator("iframe").first.locator("canvas").first
                canvas.wait_for()
                page.wait_for_timeout(2000)
                page.screenshot(path=str(shots / "5-map-viewer.png"), full_page=True)
                box = canvas.bounding_box()
                assert box and box["width"] > 100 and box["height"] > 50, box

                # 6. the champion link goes to the champion's version page
                page.goto(f"{server.url}/#/models/{name}/versions/{challenger}")
                page.get_by_role("link", name=f"champion v{champion}").first.click()
                page.wait_for_url(re.compile(rf"#/models/{name}/versions/{champion}$"))
                page.get_by_text("Notes by the team: trained on site A.").first.wait_for()
        except BaseException:
            print(f"--- server log ({server.log}):\n{tail(server.log, 6000)}")
            raise
