"""What the tests share, imported by name (fixtures are in tests/conftest.py).

- ``cohorts``: small NIfTI heads and manifests on disk; the tiny synthetic cohort's settings.
- ``tracking``: the session's MLflow store from a test: registering versions, runs, tags, the
  command line in process and in a subprocess, ``mlflow run``.
- ``models``: tiny 3D CNNs, and the networks GradCam3d is checked on per number of outputs.
- ``subjects``: in-memory subjects for ``run_engine``, a batch for GradCam3d, the layer-grid pull.
- ``odd_grid``: MONAI networks and subjects on an odd grid (uneven upsampling factors).
- ``artifacts``: what an evaluation logged, checked against its cohort; a PDF's text.
- ``servers``: real ``mlflow server`` processes, on sqlite or a throw-away PostgreSQL cluster.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository: pyproject.toml, MLproject, templates/
