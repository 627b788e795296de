"""The server's settings, checked once, and their JSON form (how `--workers` hands them to each worker process)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from dtb_ext.graph_export.runtimes import RUNTIMES

# Environment variable through which `dtb serve --workers N` passes the settings to uvicorn's worker processes.
SETTINGS_ENVIRONMENT_VARIABLE = "DTB_SERVE_SETTINGS"


@dataclass(frozen=True)
class ServeSettings:
    """model_dir / front: None for the bundled default model and its shipped front. slo_ms: the p99 latency
    objective for load-adaptive degradation (None: off). max_wait_ms: the batching linger; 0 (default): a batch
    starts as soon as the model thread is free, with every queued request up to max_batch_size; > 0: a batch waits
    up to that long after its first request's arrival for more, even on an idle server. max_queue: requests
    admitted but not answered at most; past it the server answers 503 (with or without --slo-ms).
    max_context_chars: longer contexts get a 422.
    unpatched: serve the Hugging Face model as loaded, full length only (the baseline of the load benchmark).
    runtime: "torch", or "openvino" / "onnxruntime" to serve the model's exported graph, every budget included."""

    model_dir: str | None = None
    front: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    precision: str = "auto"
    slo_ms: float | None = None
    max_batch_size: int = 32
    max_wait_ms: float = 0.0
    max_context_chars: int = 10_000
    max_queue: int = 1024
    workers: int = 1
    access_log: bool = False
    unpatched: bool = False
    runtime: str = "torch"

    def __post_init__(self) -> None:
        _check_int("max_batch_size", self.max_batch_size, 1)
        _check_int("max_context_chars", self.max_context_chars, 1)
        _check_int("max_queue", self.max_queue, 1)
        _check_int("workers", self.workers, 1)
        _check_int("port", self.port, 0)
        if self.port > 65535:
            raise ValueError(f"port must be at most 65535, got {self.port}")
        _check_number("max_wait_ms", self.max_wait_ms, allow_zero=True)
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.unpatched and self.runtime != "torch":
            raise ValueError(f"unpatched: the unpatched baseline runs in torch, got runtime {self.runtime!r}")
        if self.unpatched and self.front is not None:
            raise ValueError("unpatched: the unpatched model runs at full length only, so it takes no front")
        if self.slo_ms is not None:
            _check_number("slo_ms", self.slo_ms, allow_zero=False)
        for name in ("model_dir", "front"):
            path = getattr(self, name)
            if path is not None and not os.path.exists(path):
                raise ValueError(f"{name}: {path!r} does not exist")

    @property
    def max_body_bytes(self) -> int:
        """Largest request body read: a maximal context in the widest UTF-8 encoding plus room for the rest."""
        return 4 * self.max_context_chars + 65_536

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        return cls(**json.loads(text))


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: Any, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
