"""Pick one configuration from a searched front for a budget.

Fronts with per-question scores (format 2) are decided on paired statistics: an F1-drop budget is met by a
config whose paired-bootstrap upper bound on the drop (the front's confidence, default 90 %) is within it, on
the confirmation part when the front was confirmed (else on the search part). Older fronts are decided on point
estimates of the search-part F1. The re-evaluation (dev) scores never enter a choice, so they stay unbiased.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from dtb_ext.search.front import Front, Point, load_front
from dtb_ext.search.paired import DropInterval

# A front shipped with the default model; written by the default-model pipeline, read by `dtb pick`.
DEFAULT_FRONT_PATH = os.path.join(DEFAULT_MODEL_DIR, "front.json")


def as_front(front: Front | str | dict[str, Any] | None) -> Front:
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


@dataclass(frozen=True)
class Decision:
    """The scores a pick rests on for one point: F1 and its drop interval (None under the point-estimate rule)
    on the part the front is decided on."""

    f1: float
    drop: DropInterval | None


def decision_part(front: Front) -> str:
    """Which scores `pick` uses: "confirmation" (the front was confirmed), else "search"."""
    return "confirmation" if front.confirmed_on is not None else "search"


def _decision(front: Front, point: Point) -> Decision:
    if front.confirmed_on is not None:
        return Decision(point.confirmation.f1, point.confirmation.drop)
    return Decision(point.f1, point.drop)


def _candidates(front: Front) -> list[Point]:
    """Points `pick` may choose: the confirmed ones on a confirmed front, every evaluated one otherwise."""
    if front.confirmed_on is not None:
        return [p for p in front.points if p.confirmation is not None]
    return list(front.points)


def describe_choice(front: Front, point: Point) -> dict[str, Any]:
    """How `point` stands under the front's rule: the rule, the scores used, its F1 and drop interval there."""
    decision = _decision(front, point)
    data = front.confirmed_on if front.confirmed_on is not None else front.identity
    described: dict[str, Any] = {
        "rule": front.rule["name"] if front.rule is not None else "point estimate (front without per-question scores)",
        "scores": decision_part(front),
        # which questions decided, and how many: a certified front decides on dev-a's confirmation part
        "split": data.get("split"),
        "questions": data.get("questions"),
        "f1": decision.f1,
    }
    if front.rule is not None:
        described["confidence"] = front.rule["confidence"]
    if decision.drop is not None:
        described["drop_points"] = [decision.drop.estimate, decision.drop.low, decision.drop.high]
        percent = decision.drop.percent()
        described["drop_percent"] = None if percent is None else list(percent)
    return described


def _fastest_first(point: Point) -> tuple[float, float]:
    return (-point.speedup, -point.f1)


def pick(
    front: Front | str | dict[str, Any] | None = None,
    *,
    max_f1_drop: float | None = None,
    max_f1_drop_percent: float | None = None,
    latency_budget_ms: float | None = None,
    min_speedup: float | None = None,
) -> Point:
    """The best evaluated configuration meeting exactly one constraint.

    max_f1_drop: F1 may fall at most this many points (absolute, e.g. 1.0 = 88.7 -> 87.7) below full length;
        returns the fastest such config (highest speedup, then highest search-part F1). On a front with
        per-question scores, "falls at most" means the paired-bootstrap upper bound on the drop (front.rule's
        confidence) is within the budget, on the confirmation part when the front was confirmed.
    max_f1_drop_percent: the same, relative: at most this percentage of the full-length F1 (1.0 = 1 %).
    latency_budget_ms: measured latency per batch at most this; returns the most accurate such config. Needs a
        front searched with the latency cost model.
    min_speedup: speedup (under the front's cost model) at least this; returns the most accurate such config.
    "Most accurate" is by confirmation-part F1 on a confirmed front (only confirmed configs are candidates
    there), search-part F1 otherwise.

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
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    front = as_front(front)
    points = _candidates(front)
    decisions = {p.length_config: _decision(front, p) for p in points}

    def most_accurate_first(point: Point) -> tuple[float, float]:
        return (-decisions[point.length_config].f1, -point.speedup)

    if name in ("max_f1_drop", "max_f1_drop_percent"):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        full_f1 = decisions[front.full_length.length_config].f1
        allowed_drop = value if name == "max_f1_drop" else full_f1 * value / 100.0

        def within_budget(point: Point) -> bool:
            decision = decisions[point.length_config]
            if point.length_config == front.full_length.length_config:
                return True
            if decision.drop is None:
                # a front without per-question scores: the point estimate is all there is
                return decision.f1 >= full_f1 - allowed_drop - 1e-9
            return decision.drop.high <= allowed_drop + 1e-9

        # the full-length point itself always qualifies, so the list is never empty
        return min((p for p in points if within_budget(p)), key=_fastest_first)

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
            raise ValueError(
                f"no evaluated config meets latency_budget_ms={value}: the lowest latency is {best:.3f} ms"
            )
        return min(feasible, key=most_accurate_first)

    if value <= 0:
        raise ValueError(f"min_speedup must be > 0, got {value}")
    feasible = [p for p in points if p.speedup >= value - 1e-12]
    if not feasible:
        best = max(p.speedup for p in points)
        raise ValueError(f"no evaluated config reaches min_speedup={value}: the highest speedup is {best:.3f}x")
    return min(feasible, key=most_accurate_first)
