"""The PDF/HTML report: rendered from an artifact folder alone, read back with pypdf.

The artifact folder is built here: metrics.json from the real ``compute_metrics``, a
hand-written evaluation.json with the keys the report uses, a few tiny matplotlib PNGs. Model
description and tags carry hostile strings that try to read a local file, attach it, or reach
a loopback HTTP listener; the report must show them as plain text and fetch nothing.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import xml.etree.ElementTree as ElementTree

import numpy as np
import pandas as pd
import pypdfium2  # a test extra, like pypdf: never skipped
import pytest
from pypdf import PdfReader

from heimer_mlflow.metrics import compute_metrics
from heimer_mlflow.report import ASSET_BASE_URL, make_fetcher, render_report, report_file_name

from .helpers.artifacts import pdf_text

EPOCH = "1700000000"  # 2023-11-14
SECTIONS = [
    "Summary", "Model identity", "Intended use and limitations", "Data", "Performance", "Explainability",
    "Feature maps and raw data baseline", "Comparison with the champion", "Appendix A: Provenance",
    "Appendix B: Glossary", "Appendix C: Reporting checklist",
]
SITE_B = '<b style="background:url(file:///etc/passwd)">site-B</b>'
FIGURES = ("roc", "training_curves", "group_cam", "gallery_TP", "score_histogram")


# ---------------------------------------------------------------------------------- fixtures


class _Listener:
    """A loopback HTTP server that counts every request it gets."""

    def __init__(self):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/css")
                self.end_headers()
                self.wfile.write(b"body{background:red}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def hostile_strings(port: int) -> list[str]:
    return [
        '<img src="file:///etc/passwd">',
        '<link rel=attachment href="file:///etc/passwd">',
        f"<style>body{{background:url(http://127.0.0.1:{port}/x)}}</style>",
        f"url(http://127.0.0.1:{port}/)",
    ]


def _png(path: Path, title: str, size=(3.0, 2.0)) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=40)
    ax = fig.add_subplot()
    ax.plot([0, 1, 2], [0, 1, 0.5])
    ax.set_title(title)
    fig.savefig(path, format="png", dpi=40, metadata={"Software": None})


def write_artifacts(folder: Path, *, port: int, name="tiny-model", version="3", seed=0, figures=FIGURES,
                    excluded=True) -> Path:
    rng = np.random.default_rng(seed)
    n = 40
    y = np.array([0, 1] * (n // 2))
    score = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(0, 0.2, n), 0.01, 0.99)
    ids = [f"sub-{i:03d}" for i in range(n)]
    sites = np.where(np.arange(n) % 3 == 0, "site-A", SITE_B)  # a manifest value with markup in it
    scanner = np.where(np.isin(np.arange(n), [0, 2, 4]), "old", "new")  # "old": CN only, so its AUC is not computable
    covariates = pd.DataFrame({"site": sites, "scanner": scanner})
    report = compute_metrics(y, score, threshold=0.5, covariates=covariates, n_bootstrap=200)
    plausibility = {"cam_outside_brain_fraction": 0.04, "cam_outside_brain_floor": 0.125,
                    "cam_roi_gain_hippocampus_left": 2.1,
                    "cam_roi_gain_lateral_ventricle_left": 0.7, "sanity_spearman_mean": 0.12}
    folder.mkdir(parents=True, exist_ok=True)
    metrics = report.to_json_dict()
    metrics["plausibility"] = plausibility
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    pd.DataFrame({"subject_id": ids, "label": np.where(y == 1, "AD", "CN"), "prob_AD": score,
                  "prediction": np.where(score >= 0.5, "AD", "CN"), "site": sites, "scanner": scanner}
                 ).to_csv(folder / "predictions.csv", index=False)
    rows = [("sub-999", "img/sub-999.nii.gz", "unreadable: not a NIfTI file")] if excluded else []
    exclusions = pd.DataFrame(rows, columns=["subject_id", "path", "reason"])
    exclusions.to_csv(folder / "exclusions.csv", index=False)
    hostile = hostile_strings(port)
    evaluation = {
        "model": {"uri": f"models:/{name}/{version}", "name": name, "version": version, "aliases": ["challenger"],
                  "source_run_id": "abc123", "model_id": "m-0123",
                  "description": "A tiny test model. " + " ".join(hostile),
                  "tags": {"team": hostile[0], "note": hostile[2], "css": hostile[3], "attach": hostile[1]},
                  "metadata": {"class_names": ["CN", "AD"], "positive_class": "AD", "input_shape": [1, 8, 8, 8],
                               "intensity": "zscore", "target_layer": "body.2"}, "inferred": []},
        "cohort": {"source": "cohort/manifest.csv", "n_subjects": n, "n_excluded": int(excluded),
                   "covariates": ["site", "scanner"],
                   "excluded": exclusions.to_dict("records"), "counts": {"AD": n // 2, "CN": n // 2}},
        "configuration": {"threshold": 0.5, "batch_size": 4, "device": "auto", "n_bootstrap": 200},
        "engine": {"device": "cpu", "target_layer": "body.2", "feature_layers": ["body.2"],
                   "region_names": ["hippocampus_left", "lateral_ventricle_left"], "threshold": 0.5,
                   "gradcam": {"target_class": "AD", "upsampling": "trilinear",
                               "display_normalisation": "per subject (min-max)", "statistics": "raw (unnormalised)"},
                   "sanity": {"subject_ids": ids[:3], "spearman": [0.1, 0.2, 0.05], "mean": 0.12},
                   "feature_ranking": {"body.2": {"channel": [3.0, 1.0], "mean_abs_t": [1.2, 0.8],
                                                  "channel_mean_t": [1.1, -0.7], "channel_mean_diff": [0.01, -0.02]}},
                   "gallery": {"TP": [{"subject_id": ids[1], "prob": 0.9, "label": 1}],
                               "FN": [{"subject_id": ids[3], "prob": 0.2, "label": 1}]}},
        "plausibility": {"verdict": "pass", "reason": "4% of the Grad-CAM lies outside the brain", **plausibility},
        "history": {"train_loss": [[0, 0.7], [1, 0.5]], "val_loss": [[0, 0.72], [1, 0.6]]},
        "timings": {"total_s": 1.5},
        "versions": {"heimer-mlflow": "0.1.0", "weasyprint": "70.0"},
    }
    (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    (folder / "figures").mkdir(exist_ok=True)
    for figure in figures:
        _png(folder / "figures" / f"{figure}.png", figure)
    return folder


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.levelname}: {record.getMessage()}")


def render_checked(artifacts: Path, out: Path, **kwargs):
    """Render with the 'weasyprint' logger captured; any WARNING or ERROR fails the test."""
    capture = _Capture()
    logger = logging.getLogger("weasyprint")
    logger.addHandler(capture)
    try:
        files = render_report(artifacts, out, **kwargs)
    finally:
        logger.removeHandler(capture)
    assert capture.records == [], capture.records
    return files


_OPENED: list[str] = []
_WATCH = {"on": False}


def _audit(event, args):
    if _WATCH["on"] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def listener():
    server = _Listener()
    yield server
    server.close()


def _render(tmp_path_factory, listener, lang: str = "en") -> dict:
    root = tmp_path_factory.mktemp(f"report-{lang}")
    artifacts = write_artifacts(root / "artifacts", port=listener.port)
    old = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = EPOCH
    _OPENED.clear()
    _WATCH["on"] = True
    try:
        files = render_checked(artifacts, root / "out", lang=lang)
    finally:
        _WATCH["on"] = False
        if old is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old
    reader = PdfReader(files.pdf)
    texts = [page.extract_text() or "" for page in reader.pages]
    return {"files": files, "reader": reader, "texts": texts, "artifacts": artifacts, "root": root,
            "opened": list(_OPENED), "lang": lang}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, listener):
    return _render(tmp_path_factory, listener)


@pytest.fixture(scope="module")
def rendered_ko(tmp_path_factory, listener):
    """The same evaluation in Korean (lang="ko"): the hardening tests run on both."""
    return _render(tmp_path_factory, listener, "ko")


# the tests that hold for the report in every language
both_languages = pytest.mark.parametrize("report", ["rendered", "rendered_ko"], indirect=True)


@pytest.fixture
def report(request):
    return request.getfixturevalue(request.param)


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


# ---------------------------------------------------------------------------------- tests


def test_files_written(rendered):
    files = rendered["files"]
    assert files.pdf.name == "tiny-model-v3.pdf" and files.pdf.is_file()
    assert files.html_dir == rendered["root"] / "out" / "html"
    html = (files.html_dir / "index.html").read_text()
    # self-contained (MLflow's viewer loads it from a blob: URL): CSS inlined, figures as data: URIs;
    # the assets are copied next to it as well
    assert "<style>" in html and 'href="report.css"' not in html and (files.html_dir / "report.css").is_file()
    assert 'src="figures/' not in html and html.count('src="data:image/png;base64,') == len(FIGURES)
    for figure in FIGURES:
        assert (files.html_dir / "figures" / f"{figure}.png").is_file()
    assert files.pdf.stat().st_size < 5_000_000


def test_every_section_and_page_count(rendered):
    reader, texts = rendered["reader"], rendered["texts"]
    assert len(reader.pages) > 10
    body = _flat(" ".join(texts[1:]))
    for heading in SECTIONS:
        assert heading in body, heading
    facts = _flat(texts[0])  # page 1: Model Facts, what to decide
    for words in ("MODEL FACTS", "tiny-model", "Recommendation for the registry", "What it outputs", "Intended use",
                  "Evaluation data", "AUC", "95% CI", "Verdict of the checks", "Against the champion",
                  "Promotion gate", "Warnings", "Research use only"):
        assert words in facts, words
    cover = _flat(texts[1])
    assert "tiny-model" in cover and "PASS" in cover and "Research use only" in cover
    summary = _flat(texts[2])
    for label in ("AUC", "Sensitivity", "Specificity", "Balanced accuracy", "95% confidence interval"):
        assert label in summary, label
    assert "Page 3 of" in summary and f"of {len(reader.pages)}" in summary
    assert "4.0% (limit 22%: 12.5% that a map spread evenly over the brain" in body  # the resolution floor
    # no blank page: beyond the running header and footer, each page has text or an image
    for number, (page, text) in enumerate(zip(reader.pages, texts), start=1):
        rest = _flat(text)
        for furniture in ("Research use only. Not a diagnostic device.", f"Page {number} of {len(reader.pages)}",
                          "tiny-model version 3", *SECTIONS):
            rest = rest.replace(furniture, "")
        xobjects = page.get("/Resources", {}).get("/XObject", {}) if "/Resources" in page else {}
        assert len(rest.strip()) > 20 or len(xobjects) > 0, f"page {number} looks blank: {text!r}"


@both_languages
def test_no_blank_pages_when_rendered_to_images(report):
    """Every page, drawn as pixels, has content beyond its running header and footer band; every
    figure the PDF embeds shows something (not one flat colour)."""
    rendered = report
    document = pypdfium2.PdfDocument(str(rendered["files"].pdf))
    try:
        for number in range(len(document)):
            pixels = np.asarray(document[number].render(scale=40 / 72).to_pil().convert("L"), dtype=float)
            band = max(1, int(0.08 * pixels.shape[0]))  # running header / footer
            body = pixels[band:-band]
            assert (body < 200).mean() > 0.002, f"page {number + 1} is blank"
    finally:
        document.close()
    for page in rendered["reader"].pages:
        for image in page.images:
            drawn = np.asarray(image.image.convert("L"), dtype=float)
            assert drawn.std() > 0, f"a blank figure: {image.name}"


def test_toc_page_numbers_match_headings_and_outline(rendered):
    reader, texts = rendered["reader"], rendered["texts"]
    toc = {}
    for line in texts[1].splitlines():  # the contents, on the cover after the Model Facts page
        match = re.match(r"^(.*?)[ .\u2026]*\.{2,}[ .]*(\d+)\s*$", line.strip())
        if match:
            toc[match.group(1).strip()] = int(match.group(2))
    assert set(SECTIONS) <= set(toc), toc
    outline = {item.title: reader.get_destination_page_number(item) + 1
               for item in reader.outline if not isinstance(item, list)}
    for heading in SECTIONS:
        page = toc[heading]
        assert outline.get(heading) == page, (heading, page, outline)
        lines = [line.strip() for line in texts[page - 1].splitlines()]
        assert heading in lines, (heading, page, lines[:6])
        # the heading is not already on an earlier page after the cover (apart from running headers)
        for earlier in texts[2:page - 1]:
            assert heading not in [ln.strip() for ln in earlier.splitlines()[1:]], heading


PDFA_ID = "{http://www.aiim.org/pdfa/ns/id/}"


def pdfa_identification(xmp: bytes) -> dict[str, str]:
    """The PDF/A identification schema's part and conformance in an XMP packet, written either as
    attributes of an rdf:Description or as its child elements (both are valid XMP)."""
    found = {}
    for element in ElementTree.fromstring(xmp[xmp.index(b"<x:xmpmeta"):xmp.rindex(b"</x:xmpmeta>") + 12]).iter():
        for key in ("part", "conformance"):
            if PDFA_ID + key in element.attrib:
                found[key] = element.attrib[PDFA_ID + key]
            if element.tag == PDFA_ID + key:
                found[key] = (element.text or "").strip()
    return found


def test_pdfa_identification_is_read_in_both_xmp_forms():
    """The check above must tell PDF/A-3 from PDF/A-2, whichever way the XMP writes it."""
    head = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
    tail = b"</rdf:RDF></x:xmpmeta>"
    ns = b' xmlns:pdfaid="http://www.aiim.org/pdfa/ns/id/"'
    as_attributes = head + ns + b'><rdf:Description rdf:about="" pdfaid:part="2" pdfaid:conformance="B"/>' + tail
    as_elements = (head + ns + b'><rdf:Description rdf:about=""><pdfaid:part>3</pdfaid:part>'
                   b"<pdfaid:conformance>B</pdfaid:conformance></rdf:Description>" + tail)
    assert pdfa_identification(b"<?xpacket begin?>" + as_attributes) == {"part": "2", "conformance": "B"}
    assert pdfa_identification(as_elements) == {"part": "3", "conformance": "B"}


def test_metadata_pdfa_and_tags(rendered):
    reader = rendered["reader"]
    meta = reader.metadata
    assert meta.title == "Evaluation report: tiny-model v3"
    assert meta.author and "heimer-mlflow" in meta.author
    assert meta.subject and "tiny-model" in meta.subject
    assert "Grad-CAM" in (meta.get("/Keywords") or "")
    assert meta.creation_date.year == 2023 and meta.modification_date.year == 2023
    root = reader.trailer["/Root"]
    assert pdfa_identification(root["/Metadata"].get_object().get_data()) == {"part": "3", "conformance": "B"}
    assert "/StructTreeRoot" in root and root["/MarkInfo"]["/Marked"]
    text = _flat(" ".join(rendered["texts"]))
    assert re.search(r"Figure 1\. ", text) and re.search(r"Figure 4\. ", text)


@both_languages
def test_attachments_round_trip(report):
    rendered = report
    attachments = rendered["reader"].attachments
    assert set(attachments) == {"metrics.json", "predictions.csv"}
    for name in attachments:
        assert attachments[name][0] == (rendered["artifacts"] / name).read_bytes()


def test_missing_figures_become_notes_and_content(rendered):
    text = _flat(" ".join(rendered["texts"]))
    assert "Figure not available: calibration" in text
    assert "sub-999" in text and "unreadable: not a NIfTI file" in text  # the excluded subject
    assert "not computable" in text  # a subgroup/metric that cannot be computed is listed with its reason
    assert "No champion to compare with" in text
    html = (rendered["files"].html_dir / "index.html").read_text()
    assert 'src="figures/calibration.png"' not in html
    assert all(tag.count("alt=") == 1 for tag in re.findall(r"<img[^>]*>", html))


@both_languages
def test_hostile_registry_text_is_plain_text(report, listener):
    rendered = report
    assert listener.hits == []
    assert rendered["files"].refused_urls == []  # nothing even tried to load them
    assert not [p for p in rendered["opened"] if "passwd" in p]
    text = _flat(" ".join(rendered["texts"]))
    for hostile in [*hostile_strings(listener.port), SITE_B]:
        assert hostile in text, hostile
    html = (rendered["files"].html_dir / "index.html").read_text()
    assert '<img src="file:///etc/passwd">' not in html and "&lt;img src=" in html
    assert "<style>body" not in html and "<link rel=attachment" not in html


def test_fetcher_serves_only_its_folder(tmp_path, listener):
    from weasyprint.urls import URLFetcher

    assets = tmp_path / "html"
    (assets / "figures").mkdir(parents=True)
    (assets / "figures" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("secret")
    fetcher = make_fetcher(assets)
    assert isinstance(fetcher, URLFetcher)
    assert fetcher.fetch(ASSET_BASE_URL + "figures/a.png").read() == b"png"
    assert fetcher.fetch((assets / "figures" / "a.png").as_uri()).read() == b"png"
    assert fetcher.fetch("data:text/plain,hello").read() == b"hello"
    refused = [(tmp_path / "secret.txt").as_uri(), ASSET_BASE_URL + "../secret.txt", "file:///etc/passwd",
               f"http://127.0.0.1:{listener.port}/x", "https://example.org/x.css", "ftp://example.org/x",
               "file://otherhost/etc/passwd", ASSET_BASE_URL + "figures"]
    for url in refused:
        with pytest.raises(ValueError):
            fetcher.fetch(url)
    assert fetcher.refused == refused
    assert listener.hits == []


@both_languages
def test_byte_reproducible(report, tmp_path, monkeypatch):
    rendered = report
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    again = render_checked(rendered["artifacts"], tmp_path / "elsewhere", lang=rendered["lang"])
    assert again.pdf.read_bytes() == rendered["files"].pdf.read_bytes()


def test_incomplete_folder_still_renders(tmp_path, listener):
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "evaluation.json").write_text(json.dumps({"model": {"name": None, "version": None}}))
    (folder / "metrics.json").write_text("{not json")
    (folder / "figures").mkdir()
    (folder / "figures" / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")  # a broken image is a note
    files = render_checked(folder, tmp_path / "out")
    assert files.pdf.name == report_file_name(None, None) == "model-v-.pdf"
    text = pdf_text(files.pdf)
    assert "metrics.json could not be read" in text and "predictions.csv is missing" in text
    assert "Figure not available: roc curve" in text
    assert not (files.html_dir / "figures" / "roc.png").exists()


def _champion_of(tmp_path, listener):
    """This evaluation (an old-format record: no comparison in it) and the champion's, as found."""
    from heimer_mlflow.champion import ChampionRun

    this = write_artifacts(tmp_path / "this", port=listener.port, figures=())
    other = write_artifacts(tmp_path / "other", port=listener.port, seed=1, version="2", figures=())
    return this, ChampionRun(name="tiny-model", version="2", run_id="run-of-v2", folder=other)


def test_an_old_record_is_given_its_champion_comparison_when_read(tmp_path, listener, monkeypatch):
    """A record from before evaluations recorded their comparison is migrated once, when read:
    its champion section is the one a record carrying that comparison gets, and building and
    rendering it computes no statistic (the paired tests raise while it renders)."""
    import heimer_mlflow.champion as champion_module
    import heimer_mlflow.metrics as metrics_module
    from heimer_mlflow.record import EvaluationRecord, migrate_champion_comparison
    from heimer_mlflow.report import build_context

    this, champion = _champion_of(tmp_path, listener)
    predictions = pd.read_csv(this / "predictions.csv", dtype={"subject_id": str})
    old = EvaluationRecord.from_dict(json.loads((this / "evaluation.json").read_text()))
    assert not old.comparison_recorded and old.comparison is None
    migrated = migrate_champion_comparison(old, predictions, champion)
    assert migrated.comparison_recorded and migrated.comparison.champion_version == "2"
    assert migrated.comparison.n_shared == 40 and migrated.comparison.delong_p is not None
    assert migrate_champion_comparison(migrated, predictions, None) is migrated  # recorded: kept as it is
    # the same evaluation written by an evaluation that recorded its comparison
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    for f in this.iterdir():
        if f.is_file():
            (recorded / f.name).write_bytes(f.read_bytes())
    written = json.loads((this / "evaluation.json").read_text())
    written["comparison"] = champion_module.compare(predictions, champion, positive="AD",
                                                    class_names=("CN", "AD")).to_dict()
    (recorded / "evaluation.json").write_text(json.dumps(written))

    def no_statistics(*args, **kwargs):
        raise AssertionError("the report computed a statistic while rendering")

    for module in (champion_module, metrics_module):
        for name in ("paired_delong", "paired_delta_auc", "delong_auc", "compute_metrics", "roc_auc_score"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, no_statistics)
    monkeypatch.setattr(champion_module, "compare", no_statistics)
    from_old, from_new = build_context(this, record=migrated), build_context(recorded)
    assert from_old.champion == from_new.champion and from_old.champion.available
    assert from_old.facts.comparison == from_new.facts.comparison
    assert from_old.champion.p is not None and from_old.champion.delta.startswith(("-", "0", "+"))
    files = render_checked(this, tmp_path / "out", record=migrated)
    text = pdf_text(files.pdf)
    assert "The current champion is version 2" in text
    assert re.search(r"Difference in AUC .* on the 40 subjects both evaluations share: -?\d\.\d\d \(95% CI", text)
    assert "DeLong's test for paired AUCs" in text
    # without a champion found, an old record says so (and is not migrated)
    assert not build_context(this).champion.available
    assert "no other version of this model carries the alias 'champion'" in build_context(this).champion.why


def test_the_report_context_imports_no_statistics():
    """The modules that build the report's context import nothing that computes a statistic:
    every figure they show comes from the record."""
    import ast

    import heimer_mlflow.report as report

    computing = {"paired_delong", "paired_delta_auc", "delong_auc", "compute_metrics", "compare", "wilson_interval",
                 "stratified_bootstrap_weights", "mean_estimates", "paired_signed_rank", "roc_auc_score"}
    found = []
    for module in ("context", "sections", "facts", "checklist", "counterfactual", "text"):
        tree = ast.parse((Path(report.__file__).parent / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                found += [f"{module}: {node.module}.{a.name}" for a in node.names if a.name in computing]
                if node.module and ("stats" in node.module.split(".") or node.module.startswith("sklearn")):
                    found.append(f"{module}: {node.module}")
    assert found == []


# ---------------------------------------------------------------------------------- MLflow


def _evaluation_run(client, experiment_id, artifacts: Path) -> str:
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(artifacts))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.mark.slow
def test_report_for_run_champion_tag_and_deleted_model(tracking, tmp_path, listener):
    import mlflow
    from mlflow import MlflowClient

    from heimer_mlflow.report import report_for_run

    client = MlflowClient()
    name = "report-test-model"
    experiment_id = mlflow.set_experiment("report-tests").experiment_id
    client.create_registered_model(name)
    runs = {}
    for version, seed in (("1", 1), ("2", 0)):
        folder = write_artifacts(tmp_path / f"v{version}", port=listener.port, name=name, version=version, seed=seed,
                                 figures=("roc",))
        runs[version] = _evaluation_run(client, experiment_id, folder)
        mv = client.create_model_version(name, source=f"runs:/{runs[version]}/model", run_id=runs[version])
        assert str(mv.version) == version
        client.set_model_version_tag(name, version, "heimer.evaluation_run_id", runs[version])
    client.set_registered_model_alias(name, "champion", "1")

    files = report_for_run(runs["2"], out_dir=tmp_path / "out")
    text = pdf_text(files.pdf)
    assert "The current champion is version 1" in text and "Difference in AUC" in text
    logged = {a.path for a in client.list_artifacts(runs["2"], "report")}
    assert {"report/report-test-model-v2.pdf", "report/html"} <= logged
    assert any(a.path == "report/html/index.html" for a in client.list_artifacts(runs["2"], "report/html"))
    tag = client.get_model_version(name, "2").tags["heimer.report"]
    assert tag == f"{client.get_run(runs['2']).info.artifact_uri}/report/report-test-model-v2.pdf"

    # A fresh process, the model gone from the registry: no champion, no tag, still rendered and logged.
    client.delete_registered_model(name)
    out = tmp_path / "fresh"
    code = ("import sys; from heimer_mlflow.report import report_for_run; "
            f"f = report_for_run({runs['2']!r}, out_dir={str(out)!r}); print(f.pdf)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}, cwd=str(tracking))
    assert result.returncode == 0, result.stderr[-3000:]
    pdf = Path(result.stdout.strip().splitlines()[-1])
    assert pdf == out / "report-test-model-v2.pdf" and pdf.is_file()
    text = pdf_text(pdf)
    assert "No champion to compare with" in text
    assert any(a.path == "report/report-test-model-v2.pdf" for a in client.list_artifacts(runs["2"], "report"))


def test_a_run_logged_before_the_galleries_were_renamed_renders_its_gallery(tmp_path, listener):
    """Galleries were figures/gradcam_TP.png etc. before they were named for what they show
    (gallery_TP: the primary map): a re-render of such a run shows them as the gallery."""
    artifacts = write_artifacts(tmp_path / "old", port=listener.port, figures=("roc", "gradcam_TP"))
    files = render_checked(artifacts, tmp_path / "out")
    assert (files.html_dir / "figures" / "gallery_TP.png").is_file()
    assert not (files.html_dir / "figures" / "gradcam_TP.png").exists()
    text = _flat(pdf_text(files.pdf))
    assert "Case gallery: most confident true positives" in text and "Gradcam tp" not in text


def test_artifact_keys_name_what_the_figures_show_and_keep_the_old_keys(tmp_path):
    from heimer_mlflow.artifacts import artifact_uris

    (tmp_path / "figures").mkdir()
    figures = {name: tmp_path / "figures" / f"{name}.png" for name in ("gallery_TP", "group_cam", "roc")}
    uris = artifact_uris("file:///runs/1/artifacts", tmp_path, figures)
    assert uris["gallery_TP"] == "file:///runs/1/artifacts/figures/gallery_TP.png" == uris["gradcam_TP"]
    assert uris["group_cam"].endswith("/figures/group_cam.png") and "gradcam_TN" not in uris


def test_the_report_command_user_errors_are_one_line_and_it_leaves_nothing_behind(tracking, tmp_path, listener,
                                                                                 capsys, monkeypatch):  # fmt: skip
    """`heimer-mlflow report` with a run id that does not exist, with a run that is no evaluation,
    or with an --out it cannot write: one line, exit 2. Without --out it logs the report, prints
    the PDF's artifact URI and leaves no folder in the temp directory."""
    import tempfile

    import mlflow

    from heimer_mlflow import cli

    client = mlflow.MlflowClient()
    experiment_id = mlflow.set_experiment("report-command").experiment_id
    evaluation = _evaluation_run(client, experiment_id, write_artifacts(tmp_path / "a", port=listener.port,
                                                                          figures=("roc",)))  # fmt: skip
    training = client.create_run(experiment_id, run_name="train")
    client.set_terminated(training.info.run_id)
    (tmp_path / "a-file").write_text("not a folder")

    def report(*args) -> tuple[int, list[str], str]:
        code = cli.main(["report", *args])
        captured = capsys.readouterr()
        return code, [line for line in captured.err.splitlines() if " INFO mlflow" not in line], captured.out

    for args, words in (((f"{'0' * 31}1",), "does not exist in the tracking store"),
                        ((training.info.run_id,), "has no evaluation.json, so it is no finished heimer-mlflow evaluation"),
                        ((evaluation, "--out", str(tmp_path / "a-file" / "out")), "--out")):  # fmt: skip
        code, lines, _ = report(*args)
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("heimer-mlflow: error: ") and words in lines[0] and "FAILED" not in lines[0]
    assert not (tmp_path / "a-file").is_dir()

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    code, lines, out = report(evaluation)
    assert code == 0, lines
    assert out.strip() == f"{client.get_run(evaluation).info.artifact_uri}/report/tiny-model-v3.pdf"
    assert list(scratch.iterdir()) == []
    assert any(a.path == "report/tiny-model-v3.pdf" for a in client.list_artifacts(evaluation, "report"))


# ---------------------------------------------------------------------------------- the primary map


def _set_cam(folder: Path, *, method: str | None, gradcam_out=None, hirescam_out=None, agreement=None) -> Path:
    """Rewrite an artifact folder's evaluation.json/metrics.json as an evaluation whose primary
    map is ``method`` (None: a record from before HiResCAM, without engine.cam_method), with
    the two maps' mean outside-brain shares and their agreement."""
    evaluation = json.loads((folder / "evaluation.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    numbers = {k: v for k, v in (("gradcam_outside_brain_fraction", gradcam_out),
                                 ("hirescam_outside_brain_fraction", hirescam_out),
                                 ("cam_method_agreement", agreement)) if v is not None}
    if method is not None:
        evaluation["engine"]["cam_method"] = method
        evaluation["configuration"]["cam"] = method
    evaluation["plausibility"].update(numbers)
    metrics["plausibility"].update(numbers)
    (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return folder


def _section(text: str, start: str, end: str) -> str:
    body = text[text.index(start):]
    return body[:body.index(end)] if end in body else body


def test_hirescam_report_names_the_map_and_says_which_to_trust(tmp_path, listener):
    """Primary map HiResCAM, the two maps disagree: the explainability section, the figure
    captions and the checks say HiResCAM, explain both methods, show both outside-brain shares
    and the agreement, and say in words which map to trust; the verdict text is unchanged."""
    artifacts = _set_cam(write_artifacts(tmp_path / "a", port=listener.port), method="hirescam",
                         gradcam_out=0.62, hirescam_out=0.04, agreement=0.21)
    files = render_checked(artifacts, tmp_path / "out")
    text = pdf_text(files.pdf)
    explain = _section(text, "Explainability Method", "Feature maps and raw data baseline Layers")
    assert "Method (primary map) HiResCAM" in explain
    assert "Grad-CAM weights each channel" in explain and "HiResCAM multiplies gradient and activation" in explain
    assert re.search(r"Grad-CAM .*62\.0%", explain) and re.search(r"HiResCAM .*4\.0%", explain)
    assert "0.21" in explain
    assert "The two maps disagree" in explain and "Trust HiResCAM here" in explain
    assert "already rest on HiResCAM" in explain and "--cam hirescam" not in explain
    assert "Group-mean HiResCAM and the AD - CN difference" in explain  # the figure's caption
    assert "HiResCAM over the MRI of the AD subjects" in explain
    assert "HiResCAM outside the brain" in explain and "HiResCAM per atlas region" in explain
    for stale in ("Group-mean Grad-CAM", "Grad-CAM over the MRI", "Grad-CAM outside the brain",
                  "Grad-CAM per atlas region"):
        assert stale not in text, stale
    summary = _section(text, "Summary Plausibility verdict", "Model identity")
    assert "4% of the Grad-CAM lies outside the brain" in summary  # the verdict as applied, unchanged
    assert "explainability checks behind the verdict use HiResCAM maps" in summary
    assert "The two explanation methods disagree" in summary
    assert "HiResCAM" in (PdfReader(files.pdf).metadata.get("/Keywords") or "")


def test_gradcam_verdict_on_disagreeing_maps_suggests_hirescam(tmp_path, listener):
    from heimer_mlflow.report import build_context, render_html

    folder = write_artifacts(tmp_path / "a", port=listener.port, figures=())
    cases = [  # (method, gradcam share, hirescam share, agreement) -> disagree?
        ("gradcam", 0.05, 0.07, 0.2, True),  # low agreement
        ("gradcam", 0.45, 0.05, 0.9, True),  # outside shares 40 points apart
        ("gradcam", 0.05, 0.07, 0.8, False),
        ("hirescam", 0.10, 0.12, 0.75, False),
    ]
    for method, g, h, rho, disagree in cases:
        _set_cam(folder, method=method, gradcam_out=g, hirescam_out=h, agreement=rho)
        context = build_context(folder)
        html = _flat(re.sub(r"<[^>]+>", " ", render_html(context)))
        assert context.cam.disagree is disagree, (method, g, h, rho)
        assert ("The two maps disagree" in html) is disagree
        assert ("The two maps agree" in html) is not disagree
        name = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM"}[method]
        assert f"Method (primary map) {name}" in html
        if disagree:
            assert "rest on Grad-CAM, the less reliable of the two" in html and "--cam hirescam" in html
            assert "HiResCAM shows the places the model's score actually used" in html
    # agreement not computable (a map constant inside the brain for every subject) but the shares
    # are close: the report says so instead of "agree"
    folder = _set_cam(write_artifacts(tmp_path / "b", port=listener.port, figures=()), method="hirescam",
                      gradcam_out=0.05, hirescam_out=0.06)
    html = _flat(re.sub(r"<[^>]+>", " ", render_html(build_context(folder))))
    assert "The two maps agree" not in html and "disagree" not in html
    assert "is not computable: for every subject one of the maps is constant inside the brain" in html


def test_old_evaluation_without_cam_method_is_grad_cam(rendered):
    """A record from before HiResCAM (no engine.cam_method, no shares per method): Grad-CAM
    throughout, and the report says the two methods cannot be compared."""
    text = _flat(" ".join(rendered["texts"]))
    explain = _section(text, "Explainability Method", "Feature maps and raw data baseline Layers")
    assert "Method (primary map) Grad-CAM" in explain and "Group-mean Grad-CAM" in explain
    assert "predates HiResCAM" in explain and "disagree" not in explain


def test_model_facts_page_and_reporting_checklist(rendered):
    """Page 1 says what to decide; Appendix C lists the TRIPOD+AI and CLAIM 2024 items, filled from
    the record with a pointer to their section, the unknowable ones left to the study team; the
    same list is written as checklist.json beside the PDF."""
    texts = rendered["texts"]
    facts = _flat(texts[0])
    assert "Recommendation for the registry:" in facts and "Promotion gate Not judged in this rendering." in facts
    assert "Research use only" in facts and "Warnings" in facts
    data = json.loads(rendered["files"].checklist.read_text())
    assert data["standards"] == ["TRIPOD+AI (BMJ 2024)", "CLAIM 2024"] and data["model"]["name"] == "tiny-model"
    items = {(i["standard"], i["item"] or i["topic"]): i for i in data["items"]}
    assert items[("TRIPOD+AI", "17")]["status"] == "to be completed by the study team"  # ethics approval
    assert items[("TRIPOD+AI", "23a")]["status"] == "filled" and "AUC" in items[("TRIPOD+AI", "23a")]["text"]
    assert items[("TRIPOD+AI", "23a")]["section_name"] == "Performance"
    assert items[("CLAIM 2024", "Methods for explainability or interpretability")]["section"] == "explainability"
    assert all(i["section"] is None for i in data["items"] if i["status"].startswith("to be completed"))
    appendix = _flat(" ".join(texts[-3:]))
    assert "Appendix C: Reporting checklist" in appendix and "to be completed by the study team" in appendix
    assert re.search(r"Performance, p\. \d+", appendix)  # the pointer carries the page in the PDF


# ---------------------------------------------------------------------------------- the report in Korean


def _to_unicode(font) -> dict[int, str]:
    """A Type0 font's ToUnicode CMap: character code -> text (bfchar and bfrange entries)."""
    cmap = font["/ToUnicode"].get_object().get_data().decode("latin-1")
    codes: dict[int, str] = {}

    def text(hexes: str) -> str:
        return bytes.fromhex(hexes).decode("utf-16-be")

    for block in re.findall(r"beginbfchar(.*?)endbfchar", cmap, re.S):
        for code, target in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]*)>", block):
            codes[int(code, 16)] = text(target)
    for block in re.findall(r"beginbfrange(.*?)endbfrange", cmap, re.S):
        for low, high, rest in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*(\[[^\]]*\]|<[0-9A-Fa-f]*>)", block):
            low, high = int(low, 16), int(high, 16)
            if rest.startswith("["):
                for offset, target in enumerate(re.findall(r"<([0-9A-Fa-f]*)>", rest)):
                    codes[low + offset] = text(target)
            else:
                first = int(rest[1:-1], 16)
                for offset in range(high - low + 1):
                    codes[low + offset] = chr(first + offset)
    return codes


def glyph_audit(pdf: Path) -> tuple[list[str], dict[str, set[str]]]:
    """Every glyph the pages draw, checked against the font that draws it: the font is embedded,
    the glyph is not .notdef (glyph 0) and exists in the embedded program, a visible character's
    glyph has an outline (no empty box), and the text it stands for is known (ToUnicode).
    Returns (problems, {font name: the characters it drew})."""
    import io

    from fontTools.ttLib import TTFont
    from pypdf.generic import ByteStringObject, ContentStream, TextStringObject

    reader = PdfReader(pdf)
    problems, drawn = [], {}
    programs = {}
    for number, page in enumerate(reader.pages, start=1):
        fonts = {name: ref.get_object() for name, ref in page["/Resources"].get("/Font", {}).items()}
        current = None
        for operands, operator in ContentStream(page.get_contents(), reader).operations:
            if operator == b"Tf":
                current = fonts[operands[0]]
                continue
            if operator not in (b"Tj", b"TJ", b"'", b'"'):
                continue
            pieces = operands[0] if operator == b"TJ" else [operands[-1]]
            raw = b"".join(p.original_bytes if isinstance(p, TextStringObject) else bytes(p) for p in pieces
                           if isinstance(p, (TextStringObject, ByteStringObject)))
            name = str(current["/BaseFont"]).split("+")[-1]
            if name not in programs:
                assert current["/Subtype"] == "/Type0", name  # WeasyPrint writes CID fonts (Identity-H)
                descendant = current["/DescendantFonts"][0].get_object()
                descriptor = descendant["/FontDescriptor"].get_object()
                stream = next((descriptor[k] for k in ("/FontFile2", "/FontFile3", "/FontFile") if k in descriptor), None)
                if stream is None:
                    problems.append(f"page {number}: font {name} is not embedded")
                    programs[name] = (None, {})
                else:
                    programs[name] = (TTFont(io.BytesIO(stream.get_object().get_data())), _to_unicode(current))
            program, codes = programs[name]
            if program is None:
                continue
            glyph_order = program.getGlyphOrder()
            for i in range(0, len(raw), 2):
                gid = int.from_bytes(raw[i:i + 2], "big")  # Identity-H, CIDToGIDMap Identity
                char = codes.get(gid)
                if gid == 0 or gid >= len(glyph_order):
                    problems.append(f"page {number}: {name} draws glyph {gid} (.notdef or absent) for {char!r}")
                    continue
                if char is None:
                    problems.append(f"page {number}: {name} glyph {gid} stands for no text")
                    continue
                drawn.setdefault(name, set()).update(char)
                if "glyf" in program and not char.isspace() and program["glyf"][glyph_order[gid]].numberOfContours == 0:
                    problems.append(f"page {number}: {name} has an empty glyph for {char!r}")
    return problems, drawn


@both_languages
def test_every_glyph_comes_from_an_embedded_font_that_has_it(report):
    problems, drawn = glyph_audit(report["files"].pdf)
    assert problems == [], problems[:20]
    hangul = {font for font, chars in drawn.items() if any("\uac00" <= c <= "\ud7a3" for c in chars)}
    if report["lang"] == "ko":  # Hangul, only from NanumGothic (fonts-nanum)
        assert hangul and all(font.startswith("NanumGothic") for font in hangul), hangul
        assert sum(len(chars) for chars in drawn.values()) > 300
    else:
        assert hangul == set()


def test_korean_report_language_words_and_numbers(rendered_ko, rendered):
    """The Korean report: /Lang ko (from <html lang>), the file names, the clinical words, the
    same numbers as the English one, page furniture in Korean, within a few pages of English."""
    files, reader, texts = rendered_ko["files"], rendered_ko["reader"], rendered_ko["texts"]
    assert files.pdf.name == "tiny-model-v3-ko.pdf" and files.checklist.name == "checklist-ko.json"
    assert reader.trailer["/Root"]["/Lang"] == "ko" and rendered["reader"].trailer["/Root"]["/Lang"] == "en"
    assert reader.metadata.title == "평가 보고서: tiny-model v3"
    assert b"pdfaid:part" in reader.trailer["/Root"]["/Metadata"].get_object().get_data()
    assert set(reader.attachments) == {"metrics.json", "predictions.csv"}
    text = _flat(" ".join(texts))
    for words in ("모델 요약표", "레지스트리 권고", "알츠하이머병", "인지 정상", "민감도", "특이도", "95% 신뢰구간", "해마",
                  "설명 가능성", "부록 C: 보고 체크리스트", "연구 목적 전용", "2023년 11월 14일", "그림 1.", "통과",
                  "Grad-CAM의 4%가 뇌 밖에 있습니다"):  # the recorded English reason, worded anew in Korean
        assert words in text, words
    for english in ("Model Facts", "Recommendation for the registry", "Sensitivity", "Research use only",
                    "Figure 1.", "4% of the Grad-CAM", "Page 1 of"):
        assert english not in text, english
    pages = len(reader.pages)
    for number, page_text in enumerate(texts, start=1):
        assert f"{number} / {pages}쪽" in _flat(page_text), number
    assert abs(pages - len(rendered["reader"].pages)) <= 3
    english = _flat(" ".join(rendered["texts"]))
    auc = re.search(r"AUC (\d\.\d\d) \(95% CI (\d\.\d\d) to (\d\.\d\d)\)", english)
    assert auc and f"AUC {auc[1]} (95% 신뢰구간 {auc[2]}~{auc[3]})" in text
    assert "hippocampus_left" in text  # atlas region names stay as the atlas writes them
    html = (files.html_dir / "index.html").read_text()
    assert html.startswith("<!DOCTYPE html>\n<html lang=\"ko\">") or '<html lang="ko">' in html
    checklist = json.loads(files.checklist.read_text())
    assert checklist["items"][0]["status"] in ("filled", "partly filled", "to be completed by the study team")
    assert checklist["items"][0]["status_text"] in ("작성됨", "일부 작성됨", "연구팀이 작성")


def test_the_glyph_audit_finds_an_empty_box(tmp_path):
    """The audit above can fail: a character no installed font has is drawn as .notdef (an empty
    box), and the audit names it."""
    import weasyprint

    pdf = tmp_path / "box.pdf"
    weasyprint.HTML(string='<html lang="ko"><p>알츠하이머병 \U000f0001</p></html>').write_pdf(pdf)
    problems, drawn = glyph_audit(pdf)
    assert any(".notdef" in problem for problem in problems), problems
    assert any("알" in chars for font, chars in drawn.items() if font.startswith("Nanum")), drawn
