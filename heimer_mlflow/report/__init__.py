"""The evaluation report: an evaluation run's artifact folder in, a PDF and its HTML out.

``render_report(artifact_dir, out_dir)`` reads only what an evaluation logged
(``evaluation.json``, ``metrics.json``, ``predictions.csv``, ``exclusions.csv``,
``figures/*.png``), so a report can be re-rendered later without the model or the data.
``report_for_run(run_id)`` downloads those artifacts from MLflow, finds the champion to compare
with, renders, logs ``report/...`` to the run and tags the model version with the PDF's URI.

The HTML (``out_dir/html/index.html`` with its figures and stylesheet) is rendered from the
Jinja2 templates in ``templates/`` and is what the PDF is printed from, with WeasyPrint.

Modules: ``sections`` (what the report shows, as typed, frozen dataclasses: ``ReportContext``),
``context`` (the record and the artifact folder read into a ``ReportContext``; it computes no
statistic), ``facts`` (the Model Facts page), ``counterfactual`` (the counterfactual section),
``checklist`` (the TRIPOD+AI / CLAIM 2024 appendix), ``text`` (the words: number formats, metric
and figure captions, glossary), ``pdf`` (Jinja2, the asset fetcher and WeasyPrint: the one
security boundary, its hardening described there), ``runs`` (a logged run's report: download,
migrate an older record, render, log, tag).
"""

from .context import build_context
from .pdf import ASSET_BASE_URL, ReportFiles, make_fetcher, render_html, render_report
from .runs import find_champion, report_for_run
from .sections import ReportContext
from .text import EXTRA_FIGURE_SIZE, FIGURE_SECTIONS, FIGURES, report_file_name

__all__ = ["ASSET_BASE_URL", "EXTRA_FIGURE_SIZE", "FIGURES", "FIGURE_SECTIONS", "ReportContext", "ReportFiles",
           "build_context", "find_champion", "make_fetcher", "render_html", "render_report", "report_file_name",
           "report_for_run"]
