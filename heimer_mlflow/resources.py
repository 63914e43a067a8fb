"""Where the report templates are: inside the installed package (the wheel carries them as
``heimer_mlflow/templates``), or at the repository root in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def templates_dir() -> Path:
    for candidate in (_PACKAGE / "templates", _PACKAGE.parent / "templates"):
        if (candidate / "report.html.j2").is_file():
            return candidate
    raise FileNotFoundError(
        f"report templates not found next to {_PACKAGE}; reinstall heimer-mlflow (pip install .)"
    )
