"""What the search engine asks of an objective: a function from a length configuration to an `Evaluation`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

from dtb_ext.search.space import Config

CostModel = Literal["macs", "latency"]
COST_MODELS: tuple[str, ...] = ("macs", "latency")


@dataclass(frozen=True)
class Evaluation:
    """One run of the dynamic model at one length configuration.

    f1, exact_match: SQuAD metrics in points (0-100) on the evaluation questions.
    macs: analytic multiply-accumulates summed over the evaluated features at their real lengths (None if unknown).
    latency_ms: measured milliseconds per batch (None when latency was not measured).
    n: number of questions evaluated; seconds: wall time the evaluation took.
    per_question_f1: [n] F1 points of each question, always in the same question order for one evaluator, so
        that configs can be compared question by question (paired); None when the evaluator does not give them.
    """

    f1: float
    exact_match: float
    macs: float | None = None
    latency_ms: float | None = None
    n: int = 0
    seconds: float = 0.0
    per_question_f1: tuple[float, ...] | None = None

    def cost(self, cost_model: str) -> float:
        """The value the search minimises under `cost_model` ("macs" or "latency")."""
        if cost_model not in COST_MODELS:
            raise ValueError(f"cost model must be one of {COST_MODELS}, got {cost_model!r}")
        value = self.macs if cost_model == "macs" else self.latency_ms
        if value is None:
            raise ValueError(
                f"the evaluator returned no {cost_model!r} value, which the {cost_model!r} cost model needs"
            )
        return float(value)


Evaluator = Callable[[Config], Evaluation]


def compact_scores(per_question_f1: Sequence[float] | None) -> list[float] | None:
    """Per-question F1 rounded to 1e-4 points for storage (a study attribute, a cache entry): ~5 kB per 500
    questions instead of ~10 kB, far below any difference that matters."""
    return None if per_question_f1 is None else [round(float(v), 4) for v in per_question_f1]
