"""The old path of :mod:`heimer_mlflow.demo.nets`, which moved into the demo package: this name is
that module itself (models pickled before the move name their classes by the old path)."""

import sys

from .demo import nets

sys.modules[__name__] = nets
