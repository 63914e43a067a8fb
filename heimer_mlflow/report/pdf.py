"""From the template context to files: Jinja2 renders the HTML, WeasyPrint prints the PDF. One
security boundary, all of it here:

- every value from the registry or the manifest (names, descriptions, tags, covariates, subject
  ids) is escaped as text (``autoescape=True``), the templates fail on undefined names
  (``StrictUndefined``);
- WeasyPrint fetches through ``AssetFetcher``, which serves only regular files inside the
  report's own asset folder and ``data:`` URIs; anything else (other files, http(s), ftp, ...)
  is refused and counted;
- only regular, decodable PNGs of a sane size become figures (a broken one becomes a note);
- attachments (``metrics.json``, ``predictions.csv``) are added through the API only, so no
  text in the document can attach a file;
- with ``SOURCE_DATE_EPOCH`` set, two renders of the same folder are byte-identical (every
  date in the document and the PDF comes from it; else from the evaluation's time).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import mimetypes
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .. import i18n
from ..i18n import _
from ..record import EvaluationRecord
from ..resources import templates_dir
from .checklist import checklist_json
from .context import build_context
from .sections import ReportContext
from .text import FORMER_FIGURE_NAMES, report_file_name

log = logging.getLogger(__name__)

REPORT_CSS = "report.css"
TEMPLATE = "report.html.j2"
PDF_VARIANT = "pdf/a-3b"
MAX_FIGURE_PIXELS = 40_000_000  # a larger "figure" is refused (decompression bombs)
# The base URL the PDF is rendered under: a fixed, virtual folder that AssetFetcher maps to the
# report's asset folder, so image ids (hashes of their URLs) do not depend on out_dir.
ASSET_BASE_URL = "file:///heimer-report-assets/"
_FIGURE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}\.png$")


@dataclass
class ReportFiles:
    """What ``render_report`` wrote: the PDF and the folder with ``index.html``."""

    pdf: Path
    html_dir: Path
    checklist: Path | None = None  # checklist.json beside the PDF
    pages: int = 0
    refused_urls: list[str] = field(default_factory=list)
    seconds: float = 0.0
    artifact_uri: str | None = None  # the PDF in the run's artifacts, once report_for_run logged it

    @property
    def html(self) -> Path:
        return self.html_dir / "index.html"


# --------------------------------------------------------------------------------------------
# URL fetching: the report's own assets and data: URIs, nothing else
# --------------------------------------------------------------------------------------------


def _url_fetcher_base():
    from weasyprint.urls import URLFetcher

    return URLFetcher


class RefusedURL(ValueError):
    """A URL the report's fetcher does not serve."""


def make_fetcher(root: Path):
    """An ``AssetFetcher`` (a ``weasyprint.urls.URLFetcher``) for the asset folder ``root``."""
    base = _url_fetcher_base()

    class AssetFetcher(base):
        """Serves regular files inside ``root`` and ``data:`` URIs; refuses (raises on)
        everything else and records it in ``refused``."""

        def __init__(self, root: Path):
            super().__init__(timeout=1, allowed_protocols=("file", "data"), allow_redirects=False)
            self.root = Path(root).resolve()
            self.refused: list[str] = []
            self.served: list[str] = []

        def fetch(self, url, headers=None):
            from weasyprint.urls import URLFetcherResponse

            text = str(url)
            scheme = text.split(":", 1)[0].lower() if ":" in text else ""
            if scheme == "data":
                self.served.append(text[:40])
                return super().fetch(text, headers)
            if scheme == "file":
                parts = urlsplit(text)
                if parts.netloc not in ("", "localhost"):
                    return self._refuse(text)
                try:
                    if text.startswith(ASSET_BASE_URL):
                        # the document's own base: relative links resolve here, whatever the out_dir
                        path = (self.root / unquote(urlsplit(text[len(ASSET_BASE_URL):]).path)).resolve()
                    else:
                        path = Path(unquote(parts.path)).resolve()
                except (OSError, RuntimeError, ValueError):
                    return self._refuse(text)
                if path.is_relative_to(self.root) and path.is_file():
                    body = path.read_bytes()
                    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                    self.served.append(str(path))
                    return URLFetcherResponse(text, body, {"Content-Type": kind})
            return self._refuse(text)

        def _refuse(self, url: str):
            self.refused.append(url)
            raise RefusedURL(f"the report only loads its own assets; refused {url[:200]!r}")

    return AssetFetcher(root)


def _png_ok(path: Path) -> bool:
    """A regular, decodable PNG (a broken file becomes a note, never a broken image)."""
    if path.is_symlink() or not path.is_file() or path.stat().st_size > 50_000_000:
        return False
    try:
        from PIL import Image

        with Image.open(path) as image:
            if image.format != "PNG" or image.width * image.height > MAX_FIGURE_PIXELS:
                return False
            image.verify()
        return True
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=True,  # every file, whatever its extension (select_autoescape() skips *.j2)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        extensions=["jinja2.ext.i18n"],
    )
    # {% trans %} and _() read the language of the current context (i18n.use_language) at render
    # time; newstyle: the translation is escaped and formatted like any other value
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_callables(i18n.gettext, i18n.ngettext, newstyle=True)
    return env


def render_html(context: ReportContext) -> str:
    """The report's HTML: the template, given the context's sections by name."""
    return _environment().get_template(TEMPLATE).render(**context.template_names())


def render_report(artifact_dir, out_dir, *, record: EvaluationRecord | None = None, created: _dt.datetime | None = None,
                  run_id: str | None = None, gate: dict | None = None, lang: str | None = None) -> ReportFiles:
    """Render the report of the evaluation whose artifacts are in ``artifact_dir``.

    Writes ``out_dir/<model-name>-v<version>.pdf`` and ``out_dir/html/index.html`` with its
    assets (figures, stylesheet; relative links). ``record``: the evaluation record as read and
    migrated (:func:`heimer_mlflow.record.migrate_champion_comparison` gives a record from before
    evaluations recorded their comparison with the champion that comparison); default: read from
    ``artifact_dir/evaluation.json`` as it is. ``created``: the evaluation's time, used for the document's dates unless
    ``SOURCE_DATE_EPOCH`` is set (default: ``evaluation.json``'s time). ``run_id``: the
    evaluation run, shown in the provenance appendix. ``gate``: the promotion gate's result
    (``{"rules", "status", "failures"}``) for the Model Facts page. Interactive map viewers are
    listed from ``artifact_dir/viewers/viewers.json`` when present. Also writes
    ``out_dir/checklist.json`` (the reporting checklist). ``lang``: the report's language (en, the
    default, or ko: ``<model-name>-v<version>-ko.pdf``, ``checklist-ko.json``; needs fonts-nanum).
    """
    lang = i18n.check_language(lang)
    i18n.require_fonts(lang)
    with i18n.use_language(lang):
        return _render_report(artifact_dir, out_dir, record=record, created=created, run_id=run_id, gate=gate,
                              lang=lang)


def _render_report(artifact_dir, out_dir, *, record, created, run_id, gate, lang: str) -> ReportFiles:
    started = time.perf_counter()
    artifact_dir, out_dir = Path(artifact_dir), Path(out_dir)
    if not artifact_dir.is_dir():
        raise FileNotFoundError(f"artifact folder not found: {artifact_dir}")
    html_dir = out_dir / "html"
    out_dir.mkdir(parents=True, exist_ok=True)
    html_dir.mkdir(exist_ok=True)
    fig_out = html_dir / "figures"
    if fig_out.is_dir() and not fig_out.is_symlink():
        shutil.rmtree(fig_out)
    elif fig_out.exists() or fig_out.is_symlink():
        fig_out.unlink()
    fig_out.mkdir()
    present = set()
    fig_in = artifact_dir / "figures"
    if fig_in.is_dir():
        for path in sorted(fig_in.iterdir()):
            if _FIGURE_NAME.match(path.name) and _png_ok(path):
                shutil.copyfile(path, fig_out / path.name)
                present.add(path.name[:-4])
    for former, name in FORMER_FIGURE_NAMES.items():  # a run logged before the galleries were renamed
        if former in present and name not in present:
            (fig_out / f"{former}.png").rename(fig_out / f"{name}.png")
            present = (present - {former}) | {name}
    css_target = html_dir / REPORT_CSS
    if css_target.is_symlink():
        css_target.unlink()
    shutil.copyfile(templates_dir() / REPORT_CSS, css_target)

    context = build_context(artifact_dir, record=record, created=created, available_figures=present,
                            run_id=run_id, gate=gate, viewers=_viewers(artifact_dir))
    checklist = out_dir / ("checklist.json" if lang == "en" else f"checklist-{lang}.json")
    checklist.write_text(json.dumps(checklist_json(context), indent=1), encoding="utf-8")
    html_text = render_html(context)
    index = html_dir / "index.html"
    if index.is_symlink():
        index.unlink()
    index.write_text(_self_contained(html_text, html_dir, present), encoding="utf-8")

    pdf_path = out_dir / report_file_name(context.document.name, context.document.version, lang)
    pages, refused = _write_pdf(html_text, html_dir, pdf_path, artifact_dir, context.document.datetime)
    seconds = time.perf_counter() - started
    log.info("report: %s (%d pages, %.1f s)", pdf_path, pages, seconds)
    return ReportFiles(pdf=pdf_path, html_dir=html_dir, checklist=checklist, pages=pages, refused_urls=refused,
                       seconds=seconds)


def _viewers(artifact_dir: Path) -> list[dict]:
    """The interactive viewers the evaluation logged (``viewers/viewers.json``), or none."""
    path = artifact_dir / "viewers" / "viewers.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    except (OSError, ValueError):
        return []
    return [v for v in data if isinstance(v, dict)] if isinstance(data, list) else []


class _EnvironmentNoteFilter(logging.Filter):
    """Drops WeasyPrint's advice to install the system HarfBuzz-Subset library (it subsets the
    fonts with fontTools instead, same document): a note about the machine, not the report."""

    def filter(self, record):
        return not str(record.msg).startswith("Using fontTools instead of HarfBuzz-Subset")


def _self_contained(html_text: str, html_dir: Path, figures: set[str]) -> str:
    """The HTML with the stylesheet inlined and the figures as ``data:`` URIs.

    MLflow's artifact viewer shows an HTML artifact in a sandboxed iframe loaded from a
    ``blob:`` URL, where relative links cannot resolve; inlined, the preview is complete. Only
    our own generated attributes are replaced (``href="report.css"``, ``src="figures/<name>.png"``
    for the figure names copied): escaped registry text cannot contain them (quotes are escaped).
    """
    css = (html_dir / REPORT_CSS).read_text(encoding="utf-8")
    if "</" in css:
        raise ValueError(f"{REPORT_CSS} must not contain '</'")
    html_text = html_text.replace(f'<link rel="stylesheet" href="{REPORT_CSS}">', f"<style>\n{css}</style>", 1)
    for name in sorted(figures):
        data = base64.b64encode((html_dir / "figures" / f"{name}.png").read_bytes()).decode("ascii")
        html_text = html_text.replace(f'src="figures/{name}.png"', f'src="data:image/png;base64,{data}"')
    return html_text


def _write_pdf(html_text: str, html_dir: Path, pdf_path: Path, artifact_dir: Path, stamp: _dt.datetime):
    wp_logger = logging.getLogger("weasyprint")
    note_filter = _EnvironmentNoteFilter()
    wp_logger.addFilter(note_filter)
    try:
        return _write_pdf_unfiltered(html_text, html_dir, pdf_path, artifact_dir, stamp)
    finally:
        wp_logger.removeFilter(note_filter)


def _write_pdf_unfiltered(html_text: str, html_dir: Path, pdf_path: Path, artifact_dir: Path, stamp: _dt.datetime):
    import weasyprint

    fetcher = make_fetcher(html_dir)
    naive = stamp.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    attachments = []

    for name, description in (("metrics.json", _("All metrics with confidence intervals (JSON)")),
                              ("predictions.csv", _("Per-subject predictions (CSV)"))):
        source = artifact_dir / name
        if source.is_file() and not source.is_symlink():
            attachments.append(weasyprint.Attachment(
                string=source.read_bytes(), name=name, description=description, created=naive, modified=naive,
                relationship="Supplement", url_fetcher=fetcher))
    document = weasyprint.HTML(string=html_text, base_url=ASSET_BASE_URL,
                               url_fetcher=fetcher)
    rendered = document.render(pdf_variant=PDF_VARIANT, pdf_tags=True)
    pdf_path.write_bytes(rendered.write_pdf(pdf_variant=PDF_VARIANT, pdf_tags=True, attachments=attachments,
                                            uncompressed_pdf=False))
    return len(rendered.pages), list(fetcher.refused)
