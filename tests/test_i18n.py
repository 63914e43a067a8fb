"""The report in the reader's language: the message catalogs (complete, compiled, current), the
language chosen per call, the Hangul font found or the run stopped before any compute, and the
figures drawn with Hangul. The PDF itself in Korean: tests/test_report.py (rendered_ko).
"""

from __future__ import annotations

import re
import string
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from heimer_mlflow import i18n
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.i18n import _, use_language

ROOT = Path(__file__).resolve().parent.parent
PO = ROOT / "heimer_mlflow" / "locale" / "ko" / "LC_MESSAGES" / "heimer.po"
POT = ROOT / "heimer_mlflow" / "locale" / "heimer.pot"


def _catalog(path: Path):
    with path.open("rb") as handle:
        return read_po(handle)


def _extracted() -> dict[tuple, str]:
    """Every message in the code and the template, extracted now with Babel's API and babel.cfg
    (the README's `pybabel extract` command): (context, msgid) -> where it is."""
    from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir

    try:
        from babel.messages.frontend import parse_mapping_cfg as parse_mapping
    except ImportError:  # Babel before 2.14
        from babel.messages.frontend import parse_mapping
    with (ROOT / "babel.cfg").open() as handle:
        method_map, options_map = parse_mapping(handle)
    found = {}
    for filename, lineno, message, _comments, context in extract_from_dir(
            str(ROOT), method_map, options_map, keywords=DEFAULT_KEYWORDS):
        found[(context, message if isinstance(message, str) else tuple(message))] = f"{filename}:{lineno}"
    return found


def _fields(text: str) -> set[str]:
    """The placeholders a message fills: {name} (str.format) and %(name)s (the template's)."""
    named = set(re.findall(r"%\((\w+)\)s", text))
    try:
        named |= {field for _, field, _, _ in string.Formatter().parse(text) if field}
    except ValueError:  # a message with a literal brace is not a format string
        pass
    return named


@pytest.fixture(scope="module")
def extracted():
    return _extracted()


def test_every_message_has_a_korean_entry(extracted):
    """A message in the template or the code without Korean (or with a fuzzy one, or with other
    placeholders than the English) fails here, naming where it is."""
    catalog = _catalog(PO)
    assert len(extracted) > 500  # the report's words, figures, checklist, summary, reasons
    problems = []
    for (context, msgid), where in sorted(extracted.items(), key=lambda item: item[1]):
        entry = catalog.get(msgid if isinstance(msgid, str) else msgid[0], context=context)
        strings = entry.string if entry is not None and isinstance(entry.string, (list, tuple)) else \
            [entry.string] if entry is not None else []
        if entry is None or not all(strings) or entry.fuzzy:
            problems.append(f"{where}: no Korean for {msgid!r}")
            continue
        english = _fields(msgid if isinstance(msgid, str) else msgid[1])
        if any(_fields(s) != english for s in strings):
            problems.append(f"{where}: placeholders differ in {msgid!r}")
        if any(re.search(r"[A-Za-z]{4,} [a-z]{3,} [a-z]{3,}", re.sub(r"\{[^}]*\}|%\(\w+\)s|<[^>]+>", "", s))
               for s in strings):  # three English words in a row: an untranslated sentence
            problems.append(f"{where}: Korean entry still reads English: {strings!r}")
    assert problems == []
    assert (english_only := [m.id for m in catalog if m.id and not m.string]) == [], english_only[:5]


def test_the_template_catalog_matches_the_code(extracted):
    """heimer.pot is what `pybabel extract` (README "Translations") writes today, and the Korean
    catalog holds no message that is gone from the code."""
    def ids(catalog):
        return {(m.context, m.id if isinstance(m.id, str) else tuple(m.id)) for m in catalog if m.id}

    assert ids(_catalog(POT)) == set(extracted), "run the README's pybabel extract command"
    assert ids(_catalog(PO)) == set(extracted), "run the README's pybabel update command"


def test_the_compiled_catalog_is_current():
    """The .mo gettext reads is the .po compiled (by hatch_build.py at install time): a missing
    or stale one fails here."""
    import sys

    sys.path.insert(0, str(ROOT))
    try:
        from hatch_build import compile_catalog
    finally:
        sys.path.remove(str(ROOT))
    compiled = i18n.catalog_path("ko")
    assert compiled.is_file(), f"{compiled} missing: pip install -e . (or python hatch_build.py) compiles it"
    assert compiled.read_bytes() == compile_catalog(PO), "stale: run python hatch_build.py (or pip install -e .)"


def test_the_language_is_chosen_per_call():
    assert _("Summary") == "Summary"
    with use_language("ko"):
        assert _("Summary") == "요약" and i18n.current_language() == "ko"
        with use_language("en"):
            assert _("Summary") == "Summary"
        assert _("Summary") == "요약"
        with ThreadPoolExecutor(1) as pool:  # another thread starts in the source language
            assert pool.submit(lambda: _("Summary")).result() == "Summary"
        assert i18n.ngettext("from {n} site ({sites})", "from {n} sites ({sites})", 3) == "기관 {n}곳 ({sites})"
    assert _("Summary") == "Summary" and i18n.current_language() == "en"


@pytest.mark.parametrize("bad", ["fr", "KO-kr", "", 3])
def test_a_wrong_language_is_one_line_naming_it_and_the_choices(bad):
    with pytest.raises(HeimerError) as caught:
        i18n.check_language(bad)
    message = str(caught.value)
    assert "\n" not in message and repr(bad) in message and "en, ko" in message


def test_the_cli_refuses_a_wrong_language_in_one_line(capsys):
    from heimer_mlflow import cli

    for args in (["report", "0" * 32, "--lang", "fr"], ["evaluate", "models:/m/1", "--data", "x.csv", "--lang", "de"]):
        assert cli.main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("heimer-mlflow: error: lang=") and "en, ko" in lines[0], lines


def test_without_the_hangul_font_korean_stops_before_any_compute(tmp_path, monkeypatch, capsys):
    """The font lookup pointed at an empty folder: evaluate(lang="ko"), the CLI's report and the
    renderer stop in one line naming the Debian package, before the tracking store (unreachable
    here) or the data are touched; English still works."""
    from heimer_mlflow import cli, evaluate
    from heimer_mlflow.report import render_report

    empty = tmp_path / "no-fonts"
    empty.mkdir()
    monkeypatch.setenv(i18n.FONT_DIRS_ENV, str(empty))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: any contact would fail
    with pytest.raises(HeimerError, match=r"install the Debian package fonts-nanum") as caught:
        evaluate("models:/anything/1", tmp_path / "missing.csv", lang="ko")
    assert "\n" not in str(caught.value) and str(empty) in str(caught.value)
    with pytest.raises(HeimerError, match="fonts-nanum"):
        render_report(tmp_path, tmp_path / "out", lang="ko")
    assert not (tmp_path / "out").exists()
    assert cli.main(["report", "0" * 32, "--lang", "ko"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "fonts-nanum" in lines[0], lines
    i18n.require_fonts("en")  # English needs no extra font


def test_the_hangul_font_is_found_by_its_file_name(tmp_path, monkeypatch):
    found = i18n.hangul_fonts()
    assert found[0].name == "NanumGothic.ttf" and found[0].is_file()
    monkeypatch.setenv(i18n.FONT_DIRS_ENV, f"{tmp_path}:{found[0].parent}")
    assert i18n.hangul_fonts()[0] == found[0]


def test_korean_figures_draw_every_glyph():
    """A figure drawn in Korean has Korean labels, all drawn from a font with Hangul
    (figure_fonts: NanumGothic); without it matplotlib would warn of missing glyphs."""
    import io

    import numpy as np

    from heimer_mlflow.figures import plot_confusion_matrix, plot_roc

    def draw() -> tuple[list[str], list[str]]:
        fpr, tpr = np.linspace(0, 1, 5), np.sqrt(np.linspace(0, 1, 5))
        axes = [plot_roc(fpr, tpr, auc=0.8, auc_lower=0.7, auc_upper=0.9, class_names=("CN", "AD")),
                plot_confusion_matrix(tn=8, fp=2, fn=1, tp=9, threshold=0.5, class_names=("CN", "AD"))]
        axes[0].set_ylim(-0.2, 1.0)  # a negative tick: the minus sign (U+2212), which NanumGothic lacks
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for ax in axes:
                ax.figure.savefig(io.BytesIO(), format="png")
        labels = [ax.get_xlabel() for ax in axes] + [ax.get_title() for ax in axes]
        return labels, [str(w.message) for w in caught if "missing from font" in str(w.message)]

    with use_language("ko"):
        with i18n.figure_fonts():
            labels, missing = draw()
        assert missing == [] and any("특이도" in label for label in labels) and "혼동 행렬" in " ".join(labels)
        _, missing_without = draw()  # the default font (DejaVu Sans) has no Hangul
        assert missing_without
    labels, missing = draw()
    assert missing == [] and "ROC curve" in labels


def test_the_description_block_speaks_the_evaluation_language():
    """The version's description (heimer_mlflow.summary) in Korean: the words translated, the
    numbers and the markers that find our block unchanged, people's text kept."""
    from heimer_mlflow import summary

    block = summary.Summary(verdict="review", reason="38% of the HiResCAM lies outside the brain",
                            metrics={"roc_auc": 0.91, "roc_auc_ci_lower": 0.82, "roc_auc_ci_upper": 0.97,
                                     "sensitivity": 0.8, "sensitivity_ci_lower": 0.6, "sensitivity_ci_upper": 0.9},
                            run_id="r1", experiment_id="0", report_path="report/m-v2-ko.pdf", model_name="m",
                            n_subjects=40, evaluated_at="2026-12-05T10:00:00Z")
    with use_language("ko"):
        text, level = summary.merge("written by people", block)
        again, _level = summary.merge(text, block)
    assert level == 0 and again == text
    assert text.splitlines()[0].startswith("검토 필요 · AUC 0.91 [0.82, 0.97]") and summary.HEADLINE_END in text
    for words in ("**판정: 검토 필요**", "**권고: 승격 전 검토 필요.**", "| 민감도 | 0.800 | 0.600~0.900 |",
                  "[평가 실행(run)]", "[PDF 보고서]", "대상자 40명", summary.START, summary.END, "written by people"):
        assert words in text, words
    english, _level = summary.merge("written by people", block)
    assert "**Verdict: review**" in english and "판정" not in english


def test_every_sentence_a_korean_report_asks_for_is_in_the_catalog(tmp_path, monkeypatch):
    """At run time: every message the Korean report asks gettext for (the template's, the
    context's, the checklist's, the re-worded verdict reason's) has a Korean entry: a sentence
    built from a dynamic message id the extractor cannot see would show up in English here."""
    import gettext as gettext_module

    from heimer_mlflow.report.context import build_context
    from heimer_mlflow.report.pdf import render_html

    from .test_report import write_artifacts

    real = i18n.translations("ko")
    asked_for: list[str] = []

    class Recording(gettext_module.NullTranslations):
        def gettext(self, message):
            translated = real.gettext(message)
            if translated == message and message not in KEPT_AS_IS:
                asked_for.append(message)
            return translated

        def ngettext(self, singular, plural, n):
            return real.ngettext(singular, plural, n)

        def pgettext(self, context, message):
            return real.pgettext(context, message)

    monkeypatch.setattr(i18n, "translations", lambda lang: Recording() if lang == "ko" else real)
    artifacts = write_artifacts(tmp_path / "artifacts", port=9)
    with use_language("ko"):
        html = render_html(build_context(artifacts, run_id="r1", gate={"rules": "roc_auc>=0.7", "status": "passed",
                                                                      "failures": []}))
    assert asked_for == []
    assert '<html lang="ko">' in html and "요약" in html


# messages whose Korean is the same text (names, abbreviations, numbers): gettext returns them as given
KEPT_AS_IS = {"AUC", "Grad-CAM", "HiResCAM", "ECE", "MoRF / LeRF", "Welch t", ".", "accuracy_delta", "roc_auc_delta"}


def test_watch_takes_the_language_from_heimer_options():
    from heimer_mlflow.watch.opt_in import read_options

    assert read_options("m", '{"lang": "ko"}') == {"lang": "ko"}
    with pytest.raises(HeimerError, match=r"lang='fr'.*en, ko"):
        read_options("m", '{"lang": "fr"}')


@pytest.mark.slow
def test_a_korean_evaluation_and_its_english_report_beside_it(tracking, synthetic_cohort, tmp_path):
    """evaluate(lang="ko"): the run records the language (param and evaluation.json), the PDF is
    report/<name>-v<version>-ko.pdf (the version's heimer.report), its verdict reason and figures
    are Korean, the version's description block is Korean; `heimer-mlflow report RUN --lang en`
    then logs the English one beside it and leaves the version's report tag alone."""
    import json

    import mlflow

    from heimer_mlflow import cli, evaluate

    from .helpers.artifacts import pdf_text
    from .helpers.tracking import register_tiny_model

    name = "tiny-korean"
    version = register_tiny_model(name)
    result = evaluate(f"models:/{name}/{version}", synthetic_cohort, n_bootstrap=100, workers=0, progress=False,
                      counterfactual_subjects=2, experiment="korean-evals", lang="ko")
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.params["heimer.lang"] == "ko"
    logged = {a.path for a in client.list_artifacts(result.run_id, "report")}
    assert {f"report/{name}-v{version}-ko.pdf", "report/checklist-ko.json", "report/html-ko"} <= logged, logged
    local = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, dst_path=str(tmp_path / "a")))
    assert json.loads((local / "evaluation.json").read_text())["configuration"]["lang"] == "ko"
    text = pdf_text(local / "report" / f"{name}-v{version}-ko.pdf")
    assert "모델 요약표" in text and "뇌 밖에" in text and "Model Facts" not in text
    mv = client.get_model_version(name, version)
    assert mv.tags["heimer.report"].endswith(f"/report/{name}-v{version}-ko.pdf")
    assert "**판정: " in mv.description and "report/html-ko/index.html" in mv.description
    assert cli.main(["report", result.run_id, "--lang", "en"]) == 0
    logged = {a.path for a in client.list_artifacts(result.run_id, "report")}
    assert {f"report/{name}-v{version}.pdf", f"report/{name}-v{version}-ko.pdf", "report/html"} <= logged
    assert client.get_model_version(name, version).tags["heimer.report"] == mv.tags["heimer.report"]
    english = pdf_text(Path(mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path=f"report/{name}-v{version}.pdf", dst_path=str(tmp_path / "b"))))
    assert "Model Facts" in english and "outside the brain" in english and "모델 요약표" not in english
