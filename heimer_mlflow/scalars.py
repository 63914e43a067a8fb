"""Plain values out of what JSON, the engine or a user gave: one meaning wherever a number or a
piece of text is read back (the record, the metrics' estimates, the recommendation, the verdict)."""

from __future__ import annotations

import math
import numbers


def finite_float(value) -> float | None:
    """A finite float, else None: JSON has no NaN, and booleans are not numbers. numpy's numbers
    count (the engine's results); text, None and anything else are None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def scalar_text(value) -> str | None:
    """Text for a scalar (a version may be written as a number), None for anything else."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
