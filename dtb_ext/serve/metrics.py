"""Prometheus metrics in the text exposition format (version 0.0.4), written here rather than with a client
library: a few counters, gauges and histograms whose label values come from small fixed sets."""
from __future__ import annotations

import bisect
import math
import threading
from typing import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Labels = tuple[tuple[str, str], ...]


def _labels_text(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    escaped = (value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for _, value in pairs)
    return "{" + ",".join(f'{name}="{value}"' for (name, _), value in zip(pairs, escaped)) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help_text = help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels_text(key)} {_number(value)}" for key, value in items]


class Gauge(_Metric):
    """A value read when the metrics are rendered."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        super().__init__(name, help_text)
        self.read = read

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_number(self.read())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[Labels, list] = {}  # labels -> [per-bucket counts (last = +Inf), sum]

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._series.setdefault(key, [[0] * (len(self.buckets) + 1), 0.0])
            series[0][bisect.bisect_left(self.buckets, value)] += 1  # the first bucket whose bound is >= value
            series[1] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            series = self._series.get(tuple(sorted(labels.items())))
            return 0 if series is None else sum(series[0])

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted((key, (list(counts), total)) for key, (counts, total) in self._series.items())
        for key, (counts, total) in items:
            cumulative = 0
            for bound, count in zip(self.buckets + (math.inf,), counts):
                cumulative += count
                lines.append(f"{self.name}_bucket{_labels_text(key, (('le', _number(bound)),))} {cumulative}")
            lines.append(f"{self.name}_sum{_labels_text(key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels_text(key)} {cumulative}")
        return lines


class ServerMetrics:
    """Every metric `dtb serve` exposes on GET /metrics."""

    def __init__(self, queue_depth: Callable[[], float], in_flight: Callable[[], float],
                 backlog_ms: Callable[[], float], ms_per_gmac: Callable[[], float]) -> None:
        self.requests = Counter("dtb_requests_total", "HTTP requests answered, by path and status code.")
        self.degraded = Counter(
            "dtb_degraded_total",
            "Answers served by a faster configuration than their budget's pick (--slo-ms), by budget.",
        )
        self.shed = Counter("dtb_shed_total", "Requests answered 503 because the server was past capacity, by budget.")
        self.latency = Histogram("dtb_request_latency_seconds",
                                 "Latency of answered POST /answer requests (arrival to answer), by budget.",
                                 LATENCY_BUCKETS_S)
        self.batch_size = Histogram("dtb_batch_size", "Requests per forward batch.", BATCH_SIZE_BUCKETS)
        self._metrics: list[_Metric] = [
            self.requests, self.degraded, self.shed, self.latency, self.batch_size,
            Gauge("dtb_queue_depth", "Requests waiting for a batch.", queue_depth),
            Gauge("dtb_in_flight", "Requests in the batch the model is running.", in_flight),
            Gauge("dtb_predicted_backlog_ms", "Predicted model time of every admitted, unanswered request.",
                  backlog_ms),
            Gauge("dtb_model_ms_per_gmac", "Measured model milliseconds per analytic GMAC (the latency model).",
                  ms_per_gmac),
        ]

    def render(self) -> str:
        return "\n".join(line for metric in self._metrics for line in metric.render()) + "\n"
