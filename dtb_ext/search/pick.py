"""Pick one configuration from a searched front for a budget.

All choices use the search-split scores (the front's `f1`), never the re-evaluation (dev) scores, so that the
numbers reported on dev stay unbiased.
"""
from __future__ import annotations

import os
from typing import Any

from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from dtb_ext.search.front import Front, Point, load_front

# A front shipped with the default model; written by the default-model pipeline, read by `dtb pick`.
DEFAULT_FRONT_PATH = os.path.join(DEFAULT_MODEL_DIR, "front.json")


def _as_front(front: Front | str | dict[str, Any] | None) -> Front:
    if front is None:
        if not os.path.isfile(DEFAULT_FRONT_PATH):
            raise ValueError(
                f"the default model has no shipped front yet ({DEFAULT_FRONT_PATH} is missing); "
                "pass a front file written by `dtb search` (--front PATH)"
            )
        return load_front(DEFAULT_FRONT_PATH)
    if isinstance(front, Front):
        return front
    if isinstance(front, (str, os.PathLike)):
        return load_front(os.fspath(front))
    if isinstance(front, dict):
        return Front.from_json(front)
    raise ValueError(f"front must be a Front, a path to a front JSON or its parsed dict, got {type(front).__name__}")


def _fastest_first(point: Point) -> tuple[float, float]:
    return (-point.speedup, -point.f1)


def _most_accurate_first(point: Point) -> tuple[float, float]:
    return (-point.f1, -point.speedup)


def pick(
    front: Front | str | dict[str, Any] | None = None,
    *,
    max_f1_drop: float | None = None,
    max_f1_drop_percent: float | None = None,
    latency_budget_ms: float | None = None,
    min_speedup: float | None = None,
) -> Point:
    """The best evaluated configuration meeting exactly one constraint.

    max_f1_drop: F1 may fall at most this many points (absolute, e.g. 1.0 = 88.7 -> 87.7) below the front's
        full-length point; returns the fastest such config (highest speedup, then highest F1).
    max_f1_drop_percent: the same, relative: at most this percentage of the full-length F1 (1.0 = 1 %).
    latency_budget_ms: measured latency per batch at most this; returns the most accurate such config. Needs a
        front searched with the latency cost model.
    min_speedup: speedup (under the front's cost model) at least this; returns the most accurate such config.

    front: a Front, a path to a front JSON, its parsed dict, or None for the default model's shipped front.
    Raises ValueError when no evaluated config meets the budget, naming the best achievable value.
    """
    given = {
        "max_f1_drop": max_f1_drop,
        "max_f1_drop_percent": max_f1_drop_percent,
        "latency_budget_ms": latency_budget_ms,
        "min_speedup": min_speedup,
    }
    chosen = {name: value for name, value in given.items() if value is not None}
    if len(chosen) != 1:
        raise ValueError(f"pick needs exactly one constraint out of {sorted(given)}, got {sorted(chosen) or 'none'}")
    (name, value), = chosen.items()
    value = float(value)
    front = _as_front(front)
    points = front.points

    if name in ("max_f1_drop", "max_f1_drop_percent"):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        full_f1 = front.full_length.f1
        allowed_drop = value if name == "max_f1_drop" else full_f1 * value / 100.0
        feasible = [p for p in points if p.f1 >= full_f1 - allowed_drop - 1e-9]
        # the full-length point itself always qualifies, so `feasible` is never empty
        return min(feasible, key=_fastest_first)

    if name == "latency_budget_ms":
        measured = [p for p in points if p.latency_ms is not None]
        if not measured:
            raise ValueError(
                f"this front has no latency measurements (searched with cost model {front.cost_model!r}); "
                "search with --cost latency to pick by a latency budget"
            )
        feasible = [p for p in measured if p.latency_ms <= value]
        if not feasible:
            best = min(p.latency_ms for p in measured)
            raise ValueError(f"no evaluated config meets latency_budget_ms={value}: the lowest latency is {best:.3f} ms")
        return min(feasible, key=_most_accurate_first)

    if value <= 0:
        raise ValueError(f"min_speedup must be > 0, got {value}")
    feasible = [p for p in points if p.speedup >= value - 1e-12]
    if not feasible:
        best = max(p.speedup for p in points)
        raise ValueError(f"no evaluated config reaches min_speedup={value}: the highest speedup is {best:.3f}x")
    return min(feasible, key=_most_accurate_first)
