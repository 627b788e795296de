"""The batcher's dispatch rule, on a fake model: a request that finds the model thread idle runs at once, requests
that arrive while a batch runs go together in the next one (up to max_batch_size, each under its own config),
a model error reaches only the request that caused it, `stop` answers the running batch and everything queued
behind it, and `--max-wait-ms` > 0 still lingers for company.

The batcher's clock is stopped in every test, so a batch that waited for time to pass would never start: none of
these tests depends on how fast the machine is (every wait is an event, bounded by TIMEOUT_S)."""
from __future__ import annotations

import asyncio
import threading

from dtb_ext.serve.batcher import Batcher, Overloaded
from dtb_ext.serve.settings import ServeSettings

TIMEOUT_S = 30.0
MODEL_THREAD = "dtb-serve-model"


class FakeAnswerer:
    """Stands for QuestionAnswerer: a request is a string, a configuration any label; `run` answers
    "request@config" for each, records every batch, sets `started` on entry, then waits for `gate` (open by
    default). A request named "bad" breaks any batch that holds it."""

    def __init__(self, gate_open: bool = True) -> None:
        self.batches: list[list[tuple[str, str | None]]] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        if gate_open:
            self.gate.set()

    def predicted_ms(self, prepared: str, config: str | None) -> float:
        return 1.0

    def run(self, prepared: list[str], configs: list[str | None]) -> list[str]:
        self.batches.append(list(zip(prepared, configs)))
        self.started.set()
        if not self.gate.wait(TIMEOUT_S):
            raise RuntimeError("the test never opened the gate")
        if "bad" in prepared:
            raise ValueError("this request breaks the model")
        return [f"{request}@{config}" for request, config in zip(prepared, configs)]


class StoppedClock:
    """The batcher's clock, stopped at 0 s; `read_by_model_thread` is set once the model thread has read it (which
    it does only to time a linger)."""

    def __init__(self) -> None:
        self.read_by_model_thread = threading.Event()

    def __call__(self) -> float:
        if threading.current_thread().name == MODEL_THREAD:
            self.read_by_model_thread.set()
        return 0.0


def _batcher(answerer: FakeAnswerer, max_batch_size: int = 8, max_wait_ms: float | None = None,
             clock: StoppedClock | None = None) -> Batcher:
    """A batcher with the server's default linger unless `max_wait_ms` is given, on a stopped clock."""
    wait = ServeSettings().max_wait_ms if max_wait_ms is None else max_wait_ms
    return Batcher(answerer, max_batch_size, wait, slo_ms=None, max_queue=64, clock=clock or StoppedClock())


async def _until(event: threading.Event) -> None:
    if not await asyncio.get_running_loop().run_in_executor(None, event.wait, TIMEOUT_S):
        raise TimeoutError(f"nothing happened within {TIMEOUT_S} s")


async def _answers(admitted: list) -> list[str]:
    return await asyncio.wait_for(asyncio.gather(*(a.future for a in admitted)), TIMEOUT_S)


def test_a_request_to_an_idle_server_runs_at_once():
    # A batcher that lingered after the first request (the old default, 5 ms) would wait on a clock that never
    # moves, and never start.
    answerer = FakeAnswerer()
    batcher = _batcher(answerer)

    async def scenario() -> list[str]:
        batcher.start()
        return await _answers([batcher.submit("q0", [None])])

    try:
        assert asyncio.run(scenario()) == ["q0@None"]
    finally:
        answerer.gate.set()
        batcher.stop()
    assert answerer.batches == [[("q0", None)]]


def test_requests_that_arrive_during_a_batch_share_the_next_up_to_max_batch_size():
    answerer = FakeAnswerer(gate_open=False)
    batcher = _batcher(answerer, max_batch_size=3)

    async def scenario() -> list[str]:
        batcher.start()
        admitted = [batcher.submit("q0", [None])]
        await _until(answerer.started)  # q0 runs alone; the next four queue behind it, under mixed configs
        admitted += [batcher.submit(f"q{i}", [config]) for i, config in enumerate(["a", None, "b", "a"], start=1)]
        assert batcher.queue_depth == 4 and batcher.in_flight == 1
        answerer.gate.set()
        return await _answers(admitted)

    try:
        assert asyncio.run(scenario()) == ["q0@None", "q1@a", "q2@None", "q3@b", "q4@a"]
    finally:
        answerer.gate.set()
        batcher.stop()
    assert answerer.batches == [[("q0", None)], [("q1", "a"), ("q2", None), ("q3", "b")], [("q4", "a")]]


def test_a_model_error_fails_only_the_request_that_caused_it():
    answerer = FakeAnswerer(gate_open=False)
    batcher = _batcher(answerer)

    async def scenario() -> list:
        batcher.start()
        admitted = [batcher.submit("q0", [None])]
        await _until(answerer.started)
        admitted += [batcher.submit(name, [None]) for name in ("q1", "bad", "q2")]
        answerer.gate.set()
        return await asyncio.wait_for(asyncio.gather(*(a.future for a in admitted), return_exceptions=True),
                                      TIMEOUT_S)

    try:
        outcomes = asyncio.run(scenario())
    finally:
        answerer.gate.set()
        batcher.stop()
    assert outcomes[0] == "q0@None" and outcomes[1] == "q1@None" and outcomes[3] == "q2@None"
    assert isinstance(outcomes[2], ValueError)
    # The batch that failed is answered again request by request.
    assert answerer.batches[1:] == [[("q1", None), ("bad", None), ("q2", None)], [("q1", None)], [("bad", None)],
                                    [("q2", None)]]
    assert batcher.unanswered == 0 and batcher.backlog_ms == 0.0


def test_stop_answers_the_running_batch_and_every_queued_request_then_refuses_new_ones():
    answerer = FakeAnswerer(gate_open=False)
    batcher = _batcher(answerer, max_batch_size=2)

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        batcher.start()
        admitted = [batcher.submit("q0", [None])]
        await _until(answerer.started)
        admitted += [batcher.submit(f"q{i}", [None]) for i in range(1, 4)]
        stopping = loop.run_in_executor(None, batcher.stop)
        for _ in range(int(TIMEOUT_S / 0.01)):  # until stop() has begun; a request admitted before is answered
            try:
                admitted.append(batcher.submit(f"late{len(admitted)}", [None]))
            except Overloaded as error:
                assert "shutting down" in str(error)
                break
            await asyncio.sleep(0.01)
        else:
            raise TimeoutError("stop() never began")
        answerer.gate.set()
        await asyncio.wait_for(stopping, TIMEOUT_S)
        return await _answers(admitted)

    answers = asyncio.run(scenario())
    assert answers[:4] == ["q0@None", "q1@None", "q2@None", "q3@None"]
    assert len(answers) == sum(len(batch) for batch in answerer.batches) and batcher.unanswered == 0


def test_a_positive_max_wait_still_lingers_until_the_batch_is_full():
    answerer, clock = FakeAnswerer(), StoppedClock()
    batcher = _batcher(answerer, max_batch_size=3, max_wait_ms=1000.0, clock=clock)

    async def scenario() -> list[str]:
        batcher.start()
        admitted = [batcher.submit("q0", [None])]
        await _until(clock.read_by_model_thread)  # the model thread holds q0 back, lingering for more
        assert answerer.batches == [] and batcher.queue_depth == 1 and batcher.in_flight == 0
        admitted += [batcher.submit(f"q{i}", [None]) for i in (1, 2)]
        return await _answers(admitted)

    try:
        assert asyncio.run(scenario()) == ["q0@None", "q1@None", "q2@None"]
    finally:
        answerer.gate.set()
        batcher.stop()
    assert answerer.batches == [[("q0", None), ("q1", None), ("q2", None)]]
