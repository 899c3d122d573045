"""Percentiles the way every benchmark here reports them."""
from __future__ import annotations

import math


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (inf stays inf)."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": percentile(ordered, 50), "p90": percentile(ordered, 90),
            "p99": percentile(ordered, 99), "max": ordered[-1] if ordered else math.nan,
            "count": len(ordered)}
