"""`dtb serve`: an HTTP question-answering server (Starlette on uvicorn) where each request chooses its budget.

Concurrent requests are batched dynamically and run, mixed budgets together, on one worker thread
(`batcher.py`); `--slo-ms` moves requests whose budget allows it to faster configurations of the front when
queueing would break the objective and answers 503 past that (`admission.py`). `app.py` holds the routes,
`requests.py` the input checks, `metrics.py` the Prometheus exposition, `cli.py` the command.

Names are imported on first use, so `dtb --help` does not load Starlette or torch.
"""
from __future__ import annotations

from dtb_ext._lazy import lazy_exports

_EXPORTS = {
    "ServeSettings": "dtb_ext.serve.settings",
    "create_app": "dtb_ext.serve.app",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
