"""A request's compute budget: at most one constraint, checked with errors that name the offending field.

None of the constraints means full length (every token at every layer). With one, the configuration comes from
the model's front (`dtb_ext.pick`): `max_f1_drop_percent` the fastest within that F1 loss, `min_speedup` and
`latency_budget_ms` the most accurate at least that fast.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

MAX_F1_DROP_PERCENT = "max_f1_drop_percent"
MIN_SPEEDUP = "min_speedup"
LATENCY_BUDGET_MS = "latency_budget_ms"
BUDGET_FIELDS = (MAX_F1_DROP_PERCENT, MIN_SPEEDUP, LATENCY_BUDGET_MS)
# Constraints that only set a floor on speed: any faster configuration still meets them, so a loaded server may
# move such a request along the front (max_f1_drop_percent already picks the fastest config it allows).
SPEED_FLOORS = (MIN_SPEEDUP, LATENCY_BUDGET_MS)
FULL_LENGTH = "none"


class InputError(ValueError):
    """A bad question, context or budget; `field` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Budget:
    """At most one of the three constraints; all None means full length."""

    max_f1_drop_percent: float | None = None
    min_speedup: float | None = None
    latency_budget_ms: float | None = None

    def __post_init__(self) -> None:
        given = [name for name in BUDGET_FIELDS if getattr(self, name) is not None]
        if len(given) > 1:
            raise InputError(given[1], f"give at most one budget, got {' and '.join(given)}")
        for name in given:
            object.__setattr__(self, name, _checked_value(name, getattr(self, name)))

    @property
    def name(self) -> str:
        """The constraint's field name, or "none" for full length."""
        return next((name for name in BUDGET_FIELDS if getattr(self, name) is not None), FULL_LENGTH)

    @property
    def value(self) -> float | None:
        return None if self.name == FULL_LENGTH else getattr(self, self.name)

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> Budget:
        """The budget keys of `fields` (other keys are the caller's to check)."""
        return cls(**{name: fields[name] for name in BUDGET_FIELDS if name in fields})


def as_budget(budget: Budget | Mapping[str, Any] | None) -> Budget:
    """A Budget from itself, a {field: value} mapping (unknown keys rejected) or None (full length)."""
    if budget is None:
        return Budget()
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, Mapping):
        unknown = sorted(set(budget) - set(BUDGET_FIELDS))
        if unknown:
            raise InputError(str(unknown[0]), f"unknown budget; expected one of {', '.join(BUDGET_FIELDS)}")
        return Budget.from_mapping(budget)
    raise InputError("budget", f"expected a Budget, a mapping {{field: value}} or None, got {type(budget).__name__}")


def _checked_value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(name, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(name, f"must be a finite number, got {value}")
    if name == MAX_F1_DROP_PERCENT and value < 0:
        raise InputError(name, f"must be >= 0 (percent of the full-length F1), got {value}")
    if name != MAX_F1_DROP_PERCENT and value <= 0:
        raise InputError(name, f"must be > 0, got {value}")
    return value
