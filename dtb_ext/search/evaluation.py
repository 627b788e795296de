"""What the search engine asks of an objective: a function from a length configuration to an `Evaluation`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

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
    """

    f1: float
    exact_match: float
    macs: float | None = None
    latency_ms: float | None = None
    n: int = 0
    seconds: float = 0.0

    def cost(self, cost_model: str) -> float:
        """The value the search minimises under `cost_model` ("macs" or "latency")."""
        if cost_model not in COST_MODELS:
            raise ValueError(f"cost model must be one of {COST_MODELS}, got {cost_model!r}")
        value = self.macs if cost_model == "macs" else self.latency_ms
        if value is None:
            raise ValueError(f"the evaluator returned no {cost_model!r} value, which the {cost_model!r} cost model needs")
        return float(value)


Evaluator = Callable[[Config], Evaluation]
