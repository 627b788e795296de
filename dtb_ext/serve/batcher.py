"""Dynamic batching on one model thread: requests queue on the event loop; whenever the thread is free it takes
every queued request, up to `max_batch_size`, and answers them in shared forward passes, each under its own
configuration. The event loop never runs the model.

So a request that finds the thread idle runs at once, alone, and the requests that arrive while a batch runs go
together in the next one: batches grow with the load without any waiting. `max_wait_ms` > 0 asks for a linger
instead: a batch then waits up to that long after its first request's arrival for more (until it is full),
which an idle server pays on every request."""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dtb_ext.config import LengthConfig
from dtb_ext.answering.answerer import Answer, PreparedQuestion, QuestionAnswerer
from dtb_ext.serve.admission import choose_config
from dtb_ext.serve.metrics import ServerMetrics

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The server is past capacity (or shutting down): answer 503, retry after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Admitted:
    """What `submit` decided: the future of the answer, the configuration and whether it was degraded."""

    future: asyncio.Future
    config: LengthConfig | None
    degraded: bool


@dataclass
class _Job:
    prepared: PreparedQuestion
    config: LengthConfig | None
    predicted_ms: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    arrived: float  # seconds on the batcher's clock


class Batcher:
    """Owns the model thread. `submit` (on the event loop) admits a request or raises Overloaded.

    max_batch_size: requests per batch at most. max_wait_ms: the linger, 0 (no waiting: a batch starts as soon as
    the thread is free) or how long a batch waits after its first request's arrival for more. slo_ms, max_queue:
    admission (`admission.choose_config`) and backpressure (503 past `max_queue` unanswered requests). clock:
    seconds, on which arrivals and the linger's deadline are measured (time.monotonic; tests stop it).
    """

    def __init__(self, answerer: QuestionAnswerer, max_batch_size: int, max_wait_ms: float, slo_ms: float | None,
                 max_queue: int, metrics: ServerMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.answerer = answerer
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.slo_ms = slo_ms
        self.max_queue = max_queue
        self.metrics = metrics
        self._clock = clock
        self._queue: deque[_Job] = deque()
        self._condition = threading.Condition()
        self._unanswered = 0
        self._in_flight = 0
        self._backlog_ms = 0.0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="dtb-serve-model", daemon=True)

    # --- state, for /metrics ---------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def unanswered(self) -> int:
        return self._unanswered

    @property
    def backlog_ms(self) -> float:
        return self._backlog_ms

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 120.0) -> None:
        """Refuse new requests, answer every admitted one, then end the model thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.error("the model thread did not finish its queue within %.0f s", timeout_s)

    # --- admission (event loop) ------------------------------------------------------------------------------

    def submit(self, prepared: PreparedQuestion, ladder: list[LengthConfig | None]) -> Admitted:
        """Queue `prepared` under the most accurate configuration of `ladder` that load allows."""
        candidates = ladder if self.slo_ms is not None else ladder[:1]
        costs = [self.answerer.predicted_ms(prepared, config) for config in candidates]
        loop = asyncio.get_running_loop()
        with self._condition:
            if self._stopping:
                raise Overloaded("the server is shutting down", retry_after_s=1)
            if self._unanswered >= self.max_queue:
                raise Overloaded(f"over capacity: {self._unanswered} requests are already waiting "
                                 f"(--max-queue {self.max_queue})", self._retry_after_s())
            index = choose_config(costs, self._backlog_ms, self._unanswered == 0, self.max_wait_ms, self.slo_ms)
            if index is None:
                raise Overloaded(
                    f"over capacity: even the fastest configuration this budget allows is predicted to take "
                    f"{self._backlog_ms + self.max_wait_ms + costs[-1]:.0f} ms, over --slo-ms {self.slo_ms:g}",
                    self._retry_after_s(),
                )
            job = _Job(prepared, candidates[index], costs[index], loop, loop.create_future(), self._clock())
            self._queue.append(job)
            self._unanswered += 1
            self._backlog_ms += job.predicted_ms
            self._condition.notify_all()
        return Admitted(job.future, job.config, index > 0)

    def _retry_after_s(self) -> int:
        return max(1, math.ceil(self._backlog_ms / 1000.0))

    # --- the model thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._execute(batch)

    def _next_batch(self) -> list[_Job] | None:
        """Every queued job up to max_batch_size, as soon as one is queued (after the linger, with max_wait_ms > 0);
        None once stopped and drained."""
        with self._condition:
            while not self._queue and not self._stopping:
                self._condition.wait()
            if not self._queue:
                return None
            if self.max_wait_ms > 0:
                self._linger()
            batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            self._in_flight = len(batch)
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
        return batch

    def _linger(self) -> None:
        """With the condition held, wait on it until the queue fills a batch, the server stops, or max_wait_ms have
        passed since the first queued request arrived (already past for requests that queued behind a long batch)."""
        deadline = self._queue[0].arrived + self.max_wait_ms / 1000.0
        while len(self._queue) < self.max_batch_size and not self._stopping:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._condition.wait(remaining)

    def _execute(self, batch: list[_Job]) -> None:
        try:
            outcomes = [(answer, None) for answer in self._run_model(batch)]
        except Exception as error:
            logger.exception("the model failed on a batch of %d request(s)", len(batch))
            # Answer each alone, so that only the client whose request breaks the model gets an error.
            outcomes = [self._alone(job) for job in batch] if len(batch) > 1 else [(None, error)]
        with self._condition:
            self._in_flight = 0
            self._unanswered -= len(batch)
            # Exactly zero when nothing is left, so float rounding cannot accumulate over a long run.
            self._backlog_ms = 0.0 if self._unanswered == 0 else self._backlog_ms - sum(j.predicted_ms for j in batch)
        for job, (answer, error) in zip(batch, outcomes):
            _settle(job, answer, error)

    def _run_model(self, batch: list[_Job]) -> list[Answer]:
        return self.answerer.run([job.prepared for job in batch], [job.config for job in batch])

    def _alone(self, job: _Job) -> tuple[Answer | None, BaseException | None]:
        try:
            return self._run_model([job])[0], None
        except Exception as error:
            logger.exception("the model failed on a single request")
            return None, error


def _settle(job: _Job, answer: Any, error: BaseException | None) -> None:
    """Hand the outcome to the waiting handler on its event loop (from the model thread)."""
    def settle() -> None:
        if job.future.done():  # the handler was cancelled (its client went away)
            return
        if error is None:
            job.future.set_result(answer)
        else:
            job.future.set_exception(error)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the event loop has closed: nobody waits for this answer any more
        pass
