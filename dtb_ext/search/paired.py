"""Paired statistics of a config's F1 against full length on the same questions.

Two configs scored on the same questions differ on few of them, so the per-question differences say much more
about the drop than two independent F1 means would: a paired bootstrap resamples questions (the same resampled
questions for both configs) and reads the drop's interval off the resampled mean differences.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

# Resamples per interval: the 90 % quantile of 2,000 resamples moves by well under 0.05 F1 points between seeds
# for ~500 questions, far less than the interval's own width.
DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.9
DEFAULT_SEED = 0
# Resamples drawn per block, so that 2,000 resamples of 5,000 questions need ~8 MB at a time, not 80 MB.
_BLOCK = 250


@dataclass(frozen=True)
class BootstrapSettings:
    """How drop intervals are computed: `resamples` paired bootstrap resamples drawn with numpy's generator
    seeded by `seed`; the interval is the (1 - confidence, confidence) pair of quantiles of the resampled drop,
    so its upper end is a one-sided `confidence` upper bound."""

    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"the bootstrap confidence must lie in (0.5, 1), got {self.confidence}")
        if self.resamples < 100:
            raise ValueError(f"the bootstrap needs at least 100 resamples, got {self.resamples}")

    def to_json(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "resamples": self.resamples, "seed": self.seed}

    @staticmethod
    def from_json(record: dict[str, Any]) -> "BootstrapSettings":
        return BootstrapSettings(float(record["confidence"]), int(record["resamples"]), int(record["seed"]))


@dataclass(frozen=True)
class DropInterval:
    """F1 drop of a config below full length, in F1 points (positive: the config is worse), on n questions.

    estimate: mean per-question difference (= full-length F1 - config F1 on those questions).
    reference_f1: the full-length F1 on those questions (the denominator of the relative drop).
    low, high: the (1 - confidence) and confidence quantiles of the paired bootstrap; `high` is the one-sided
        upper bound that `pick` holds against the budget.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n: int
    reference_f1: float

    def percent(self) -> tuple[float, float, float] | None:
        """(estimate, low, high) as percentages of the full-length F1 on the same questions (the relative drop,
        as `max_f1_drop_percent` budgets it); None when that F1 is 0."""
        if self.reference_f1 <= 0:
            return None
        return tuple(100.0 * value / self.reference_f1 for value in (self.estimate, self.low, self.high))

    def to_json(self) -> dict[str, Any]:
        percent = self.percent()
        return {
            "estimate": self.estimate, "low": self.low, "high": self.high, "confidence": self.confidence, "n": self.n,
            "reference_f1": self.reference_f1,
            "percent": None if percent is None else dict(zip(("estimate", "low", "high"), percent)),
        }

    @staticmethod
    def from_json(record: dict[str, Any] | None) -> "DropInterval | None":
        if record is None:
            return None
        return DropInterval(float(record["estimate"]), float(record["low"]), float(record["high"]),
                            float(record["confidence"]), int(record["n"]), float(record["reference_f1"]))


def paired_drop_interval(
    reference_f1: Sequence[float],
    candidate_f1: Sequence[float],
    settings: BootstrapSettings | None = None,
) -> DropInterval:
    """The paired bootstrap interval of the F1 drop from `reference_f1` (full length) to `candidate_f1`.

    Args:
        reference_f1: [n] per-question F1 (points, 0-100) at full length.
        candidate_f1: [n] per-question F1 of the config on the same questions, in the same order.
        settings: confidence, resamples and seed (default BootstrapSettings()).

    Deterministic: the resampled question indices depend only on (seed, n), so every config of a front is
    resampled on the same questions.
    """
    settings = settings or BootstrapSettings()
    reference = np.asarray(reference_f1, dtype=np.float64)
    candidate = np.asarray(candidate_f1, dtype=np.float64)
    if reference.ndim != 1 or reference.shape != candidate.shape:
        raise ValueError(
            f"paired scores need one F1 per question for both configs, got shapes {reference.shape} and "
            f"{candidate.shape}"
        )
    n = reference.shape[0]
    if n == 0:
        raise ValueError("paired scores need at least one question, got none")
    differences = reference - candidate
    generator = np.random.default_rng(settings.seed)
    means = np.empty(settings.resamples)
    for start in range(0, settings.resamples, _BLOCK):
        stop = min(start + _BLOCK, settings.resamples)
        indices = generator.integers(0, n, size=(stop - start, n))
        means[start:stop] = differences[indices].mean(axis=1)
    low, high = np.quantile(means, [1.0 - settings.confidence, settings.confidence])
    return DropInterval(float(differences.mean()), float(low), float(high), settings.confidence, n,
                        float(reference.mean()))
