"""The serving facade: `QuestionAnswerer` answers questions about contexts of any length, each under its own
compute budget, picking configurations from the model's searched front.

It sits above `search/` (it reads fronts and picks from them) and below `serve/` (the HTTP server drives it):
`answerer.py` the facade, `budget.py` a request's budget and its checks, `latency.py` the model-time predictor
that `latency_budget_ms` needs.

Names are imported on first use, so importing the budget checks does not load torch.
"""
from __future__ import annotations

from dtb_ext._lazy import lazy_exports

_EXPORTS = {
    "Answer": "dtb_ext.answering.answerer",
    "PreparedQuestion": "dtb_ext.answering.answerer",
    "QuestionAnswerer": "dtb_ext.answering.answerer",
    "Budget": "dtb_ext.answering.budget",
    "InputError": "dtb_ext.answering.budget",
    "LatencyModel": "dtb_ext.answering.latency",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
