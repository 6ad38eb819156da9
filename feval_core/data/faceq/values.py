"""Reading cells and scores: empty cells, numbers, names, and the score scales rescaled to 0..100."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

SCALES: tuple[str, ...] = ("0-100", "0-5", "1-5", "0-1")
_EMPTY_CELLS = frozenset({"", "nan", "na", "n/a", "none", "null", "-"})

_SCALE_TEXT = {"0-5": "x*20", "1-5": "(x-1)*25", "0-1": "x*100", "0-100": "no change"}
_SCALE_FN: dict[str, Callable[[float], float]] = {
    "0-100": lambda x: x,
    "0-5": lambda x: round(x * 20.0, 6),  # round away float noise: (4.1 - 1) * 25 -> 77.5, not 77.49999999999999
    "1-5": lambda x: round((x - 1.0) * 25.0, 6),
    "0-1": lambda x: round(x * 100.0, 6),
}


def _is_empty(cell: Any) -> bool:
    if cell is None:
        return True
    if isinstance(cell, numbers.Real):
        return math.isnan(float(cell))
    return isinstance(cell, str) and cell.strip().lower() in _EMPTY_CELLS


def _number(cell: Any) -> float | None:
    if isinstance(cell, bool) or _is_empty(cell):
        return None
    if isinstance(cell, numbers.Real):
        value = float(cell)
        return value if math.isfinite(value) else None
    if isinstance(cell, str):
        s = cell.strip()
        for candidate in (s, s.replace(",", ".") if s.count(",") == 1 and "." not in s else None):
            if candidate is None:
                continue
            try:
                value = float(candidate)
            except ValueError:
                continue
            return value if math.isfinite(value) else None
    return None


def _text(cell: Any) -> str | None:
    if _is_empty(cell):
        return None
    if isinstance(cell, numbers.Real) and not isinstance(cell, bool) and float(cell).is_integer():
        return str(int(cell))  # a numeric name read from a spreadsheet: 12.0 -> "12"
    return str(cell).strip()
