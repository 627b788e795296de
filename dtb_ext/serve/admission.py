"""Which configuration serves a request, given the predicted backlog, or whether to refuse it (503).

A request arrives with its ladder: the configurations its budget allows, most accurate first
(`QuestionAnswerer.configs_for`). Its predicted latency under configuration c is the model time of everything
admitted before it (the backlog, whether queued or running), plus the batching wait, plus its own model time
under c. Every prediction comes from the same latency model (ms per analytic GMAC, measured).
"""
from __future__ import annotations

from collections.abc import Sequence


def choose_config(costs_ms: Sequence[float], backlog_ms: float, idle: bool, wait_ms: float,
                  slo_ms: float | None) -> int | None:
    """Index into the ladder of the configuration to serve, or None to refuse the request.

    Args:
        costs_ms: predicted model time of the request under each configuration of its ladder (most accurate first).
        backlog_ms: predicted model time of the requests admitted and not yet answered.
        idle: nothing is admitted and unanswered.
        wait_ms: the longest a request waits for its batch to fill (--max-wait-ms; 0 by default: no linger).
        slo_ms: the latency objective, or None (no load adaptation: always the first configuration).

    With an objective: the most accurate configuration predicted to finish within it. On an idle server a request
    that no configuration can serve in time gets the fastest one: queueing is not the cause, and refusing it
    would refuse it forever.
    """
    if slo_ms is None:
        return 0
    for index, cost in enumerate(costs_ms):
        if backlog_ms + wait_ms + cost <= slo_ms:
            return index
    return len(costs_ms) - 1 if idle else None
