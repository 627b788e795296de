"""Predicted model time of a request: measured milliseconds per analytic GMAC times the request's GMACs.

MACs (dtb_ext.macs) are the front's cost model, so one constant turns any configuration at any input length into
a time. The constant is measured once (`QuestionAnswerer.calibrate`) and then follows the forward passes actually
run (an exponential moving average), so it tracks batching and machine load.
"""
from __future__ import annotations

import math
import threading


class LatencyModel:
    """ms = ms_per_gmac * GMACs. `learning_rate` weighs each new observation (0 keeps the constant fixed)."""

    def __init__(self, ms_per_gmac: float | None = None, learning_rate: float = 0.2) -> None:
        if ms_per_gmac is not None and not (math.isfinite(ms_per_gmac) and ms_per_gmac > 0):
            raise ValueError(f"ms_per_gmac must be a finite number > 0, got {ms_per_gmac}")
        if not 0.0 <= learning_rate <= 1.0:
            raise ValueError(f"learning_rate must lie in [0, 1], got {learning_rate}")
        self._ms_per_gmac = ms_per_gmac
        self.learning_rate = learning_rate
        self._lock = threading.Lock()

    @property
    def calibrated(self) -> bool:
        return self._ms_per_gmac is not None

    @property
    def ms_per_gmac(self) -> float | None:
        return self._ms_per_gmac

    def predict(self, gmacs: float) -> float:
        """Milliseconds for `gmacs`; the model must have been calibrated or observed once."""
        if self._ms_per_gmac is None:
            raise ValueError("the latency model has no measurement yet: calibrate it first")
        return self._ms_per_gmac * gmacs

    def observe(self, gmacs: float, ms: float) -> None:
        """One forward pass of `gmacs` took `ms`; the first observation sets the constant."""
        if gmacs <= 0 or not math.isfinite(ms) or ms <= 0:
            return
        measured = ms / gmacs
        with self._lock:
            if self._ms_per_gmac is None:
                self._ms_per_gmac = measured
            else:
                self._ms_per_gmac += self.learning_rate * (measured - self._ms_per_gmac)
