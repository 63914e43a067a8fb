"""A plain (non-editable) install must carry the report templates: build the wheel and import
the package from its unpacked contents, far from the source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .helpers import REPO


def test_wheel_ships_the_templates_and_finds_them(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("heimer_mlflow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for template in (REPO / "templates").iterdir():
        assert f"heimer_mlflow/templates/{template.name}" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "heimer-mlflow = heimer_mlflow.cli:main" in entry_points
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    found = subprocess.run(
        [sys.executable, "-c", "from heimer_mlflow.resources import templates_dir; print(templates_dir())"],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"},
    )
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == unpacked / "heimer_mlflow" / "templates"
    # the Korean catalog, compiled by the build (hatch_build.py): git ignores the .mo, the wheel has it
    assert {"heimer_mlflow/locale/ko/LC_MESSAGES/heimer.po", "heimer_mlflow/locale/ko/LC_MESSAGES/heimer.mo"} <= set(names)
    korean = subprocess.run(
        [sys.executable, "-c", "from heimer_mlflow.i18n import _, use_language\n"
                               "with use_language('ko'): print(_('Summary'))"],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"},
    )
    assert korean.returncode == 0 and korean.stdout.strip() == "요약", korean.stderr
