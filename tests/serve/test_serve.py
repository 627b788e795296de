"""`dtb serve` on loopback with a real HTTP client: answers equal QuestionAnswerer's under 64 concurrent clients
with mixed budgets, every bad input gets a 4xx naming its field, --slo-ms degrades and then sheds, shutdown
answers in-flight requests, and thousands of requests neither crash the server nor grow its memory.

Every server runs the tiny QA model (tests/serving.py) with one torch thread; every loop is bounded in count and
time (client timeouts, `wait_until`)."""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import threading

import httpx
import pytest

from dtb_ext.answering.answerer import QuestionAnswerer
from dtb_ext.answering.latency import LatencyModel
from dtb_ext.serve.admission import choose_config
from dtb_ext.serve.app import create_app
from dtb_ext.serve.metrics import Histogram
from dtb_ext.serve.settings import ServeSettings
from serving import InProcessServer, ServerProcess, save_tiny_model_with_front, wait_until

TIMEOUT = httpx.Timeout(60.0)
MAX_CONTEXT_CHARS = 3000
NORMANS = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region "
           "in France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.")
ROME = ("Rome is the capital city of Italy. It is also the capital of the Lazio region, the centre of the "
        "Metropolitan City of Rome, and a special comune named Comune di Roma Capitale.")
LONG = " ".join([NORMANS, ROME] * 7)  # several windows
CASES = [
    ("Who gave their name to Normandy?", NORMANS),
    ("What is the capital of Italy?", ROME),
    ("From where were the Normans descended?", LONG),
    ("Which region is Rome the capital of?", LONG),
]
BUDGETS = [{}, {"min_speedup": 1.7}, {"max_f1_drop_percent": 5.0}, {"min_speedup": 2.0}, {"latency_budget_ms": 1e6}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model_with_front(str(tmp_path_factory.mktemp("tiny_serve")))


@pytest.fixture(scope="module")
def answerer(model_dir):
    return QuestionAnswerer(model_dir)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("logs") / "serve.log")
    args = ["--model", model_dir, "--precision", "fp32", "--max-batch-size", "16", "--max-wait-ms", "20",
            "--max-context-chars", str(MAX_CONTEXT_CHARS)]
    with ServerProcess(args, log) as running:
        yield running


def _expected(answerer, question, context, budget):
    return answerer.answer(question, context, budget or None).to_json()


def _check_same_answer(body, expected):
    assert {k: body[k] for k in ("answer", "start_char", "end_char", "length_config")} == {
        k: expected[k] for k in ("answer", "start_char", "end_char", "length_config")}
    assert body["score"] == pytest.approx(expected["score"], abs=1e-3)  # batched with others: padding differs


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of metric `name` in a Prometheus exposition whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        metric, _, label_text = series.partition("{")
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
        if metric == name and all(found.get(key) == wanted for key, wanted in labels.items()):
            total += float(value)
    return total


async def _post_all(url: str, bodies: list[dict], concurrency: int = 64) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def post(body):
            async with gate:
                return await client.post("/answer", json=body)

        return await asyncio.gather(*(post(body) for body in bodies))


# --- answers ---------------------------------------------------------------------------------------------------


def test_health_and_one_answer(server, answerer):
    health = httpx.get(f"{server.url}/health", timeout=TIMEOUT)
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["front"] is True
    question, context = CASES[0]
    response = httpx.post(f"{server.url}/answer", json={"question": question, "context": context}, timeout=TIMEOUT)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"answer", "start_char", "end_char", "score", "length_config", "ms", "degraded"}
    assert body["length_config"] is None and body["degraded"] is False and body["ms"] > 0
    assert context[body["start_char"]:body["end_char"]] == body["answer"]
    _check_same_answer(body, _expected(answerer, question, context, None))


def test_64_concurrent_clients_with_mixed_budgets_get_question_answerer_answers(server, answerer):
    requests = []
    for index in range(64):
        question, context = CASES[index % len(CASES)]
        requests.append({"question": question, "context": context, **BUDGETS[index % len(BUDGETS)]})
    batches_before = _metric(httpx.get(f"{server.url}/metrics").text, "dtb_batch_size_count")
    responses = asyncio.run(_post_all(server.url, requests))
    assert [r.status_code for r in responses] == [200] * 64
    for request, response in zip(requests, responses):
        budget = {k: v for k, v in request.items() if k not in ("question", "context")}
        _check_same_answer(response.json(), _expected(answerer, request["question"], request["context"], budget))
    assert len({json.dumps(r.json()["length_config"]) for r in responses}) >= 4  # budgets really mixed
    metrics = httpx.get(f"{server.url}/metrics").text
    assert _metric(metrics, "dtb_batch_size_count") - batches_before < 64  # requests shared batches
    for budget in ("none", "min_speedup", "max_f1_drop_percent", "latency_budget_ms"):
        assert _metric(metrics, "dtb_request_latency_seconds_count", budget=budget) >= 1
    assert "# TYPE dtb_queue_depth gauge" in metrics and "# TYPE dtb_request_latency_seconds histogram" in metrics


# --- bad input -------------------------------------------------------------------------------------------------

GOOD = {"question": "Where is Normandy?", "context": NORMANS}
BAD_JSON = [
    (b'{"question": "Where', 400, "body"),
    (b"", 400, "body"),
    (b"\xff\xfe\xfa not utf-8", 400, "body"),
    (b"[" * 50_000, 400, "body"),  # nested past the JSON parser's recursion limit
    (b'["question", "context"]', 422, "body"),
    (b'"just a string"', 422, "body"),
    (b'{"question": "Where is Normandy?", "context": "In France.", "min_speedup": NaN}', 422, "min_speedup"),
    (b'{"question": "Where? \\ud800", "context": "In France."}', 422, "question"),
    (b"x" * (4 * MAX_CONTEXT_CHARS + 70_000), 413, "body"),
]
BAD_FIELDS = [
    ({"context": NORMANS}, "question"),
    ({"question": "Where is Normandy?"}, "context"),
    ({**GOOD, "question": ""}, "question"),
    ({**GOOD, "question": "   "}, "question"),
    ({**GOOD, "context": ""}, "context"),
    ({**GOOD, "question": 42}, "question"),
    ({**GOOD, "question": None}, "question"),
    ({**GOOD, "question": ["Where?"]}, "question"),
    ({**GOOD, "context": {"text": NORMANS}}, "context"),
    ({**GOOD, "question": "why " * 100}, "question"),  # over max_query_length (64 tokens)
    ({**GOOD, "context": "a " * MAX_CONTEXT_CHARS}, "context"),  # over --max-context-chars
    ({**GOOD, "temperature": 0.5}, "temperature"),
    ({**GOOD, "min_speedup": 1.5, "max_f1_drop_percent": 2}, "min_speedup"),
    ({**GOOD, "min_speedup": -1.5}, "min_speedup"),
    ({**GOOD, "max_f1_drop_percent": -1}, "max_f1_drop_percent"),
    ({**GOOD, "latency_budget_ms": -3}, "latency_budget_ms"),
    ({**GOOD, "latency_budget_ms": 0}, "latency_budget_ms"),
    ({**GOOD, "min_speedup": "2x"}, "min_speedup"),
    ({**GOOD, "min_speedup": True}, "min_speedup"),
    ({**GOOD, "min_speedup": 1e6}, "min_speedup"),  # cannot be met by any config of the front
    ({**GOOD, "latency_budget_ms": 1e-9}, "latency_budget_ms"),  # cannot be met
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_JSON)
def test_malformed_bodies_get_4xx_naming_the_field(server, body, status, field):
    response = httpx.post(f"{server.url}/answer", content=body, timeout=TIMEOUT,
                          headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["field"] == field and response.json()["error"]


@pytest.mark.parametrize(("body", "field"), BAD_FIELDS)
def test_bad_fields_get_422_naming_the_field(server, body, field):
    response = httpx.post(f"{server.url}/answer", json=body, timeout=TIMEOUT)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and response.json()["error"]


def test_unknown_paths_and_methods_get_json_errors_and_the_server_keeps_serving(server):
    assert httpx.get(f"{server.url}/answer", timeout=TIMEOUT).status_code == 405
    missing = httpx.get(f"{server.url}/nowhere", timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json()["field"] is None
    assert httpx.post(f"{server.url}/answer", json=GOOD, timeout=TIMEOUT).status_code == 200


def test_thousands_of_bad_and_good_requests_neither_crash_nor_grow_memory(server):
    bodies: list = [body for body, _ in BAD_FIELDS] + [GOOD, {**GOOD, "min_speedup": 2.0}] * 4
    raw = [body for body, _, _ in BAD_JSON if len(body) < 10_000]

    async def hammer(count: int) -> dict[int, int]:
        statuses: dict[int, int] = {}
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT, limits=limits) as client:
            gate = asyncio.Semaphore(16)

            async def one(index: int) -> None:
                async with gate:
                    if index % 5 == 0:
                        response = await client.post("/answer", content=raw[index % len(raw)])
                    else:
                        response = await client.post("/answer", json=bodies[index % len(bodies)])
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

            await asyncio.gather(*(one(index) for index in range(count)))
        return statuses

    asyncio.run(hammer(600))  # warm-up: allocator pools, caches, every code path once
    before = server.rss_bytes()
    statuses = asyncio.run(hammer(2400))
    growth = server.rss_bytes() - before
    assert set(statuses) <= {200, 400, 413, 422} and statuses[200] > 300 and statuses[422] > 1000
    assert growth < 48 * 2**20, f"the server's resident memory grew by {growth / 2**20:.1f} MiB"
    assert server.process.poll() is None
    assert httpx.get(f"{server.url}/health", timeout=TIMEOUT).status_code == 200


# --- load adaptation -------------------------------------------------------------------------------------------


class GatedAnswerer:
    """A QuestionAnswerer whose model thread waits for `gate` before each batch, so requests pile up."""

    def __init__(self, inner: QuestionAnswerer) -> None:
        self.inner = inner
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, prepared, configs):
        if not self.gate.wait(60):
            raise RuntimeError("the test never opened the gate")
        return self.inner.run(prepared, configs)

    async def open_when_all_arrived(self, app, requests: int) -> None:
        """Open the gate once each of `requests` is either waiting in `app`'s batcher or shed (at most 60 s)."""
        batcher, metrics = app.state.server.batcher, app.state.server.metrics
        for _ in range(1200):
            if batcher.unanswered + metrics.shed.value(budget="min_speedup") == requests:
                break
            await asyncio.sleep(0.05)
        self.gate.set()


def test_slo_moves_requests_along_the_front_then_sheds(model_dir):
    inner = QuestionAnswerer(model_dir, latency_model=LatencyModel(ms_per_gmac=100.0, learning_rate=0.0))
    gated = GatedAnswerer(inner)
    question, context = CASES[2]
    budget = {"min_speedup": 1.0}  # full length first; every faster config of the front also meets it
    prepared = inner.prepare(question, context)
    ladder = inner.configs_for(budget, prepared)
    costs = [inner.predicted_ms(prepared, config) for config in ladder]
    slo_ms = 2.5 * costs[0]
    # What the admission rule decides for identical requests arriving while nothing completes.
    expected, backlog, shed = [], 0.0, 0
    for _ in range(24):
        index = choose_config(costs, backlog, not expected, 0.0, slo_ms)
        if index is None:
            shed += 1
        else:
            expected.append(index)
            backlog += costs[index]
    assert expected[0] == 0 and max(expected) > 0 and shed > 0  # the scenario exercises all three outcomes

    settings = ServeSettings(slo_ms=slo_ms, max_wait_ms=0.0, max_batch_size=4)
    app = create_app(settings, gated)

    async def scenario(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
            tasks = [asyncio.create_task(client.post("/answer", json={"question": question, "context": context,
                                                                      **budget})) for _ in range(24)]
            await gated.open_when_all_arrived(app, 24)
            return await asyncio.gather(*tasks)

    with InProcessServer(app) as running:
        responses = asyncio.run(scenario(running.url))
        metrics_text = httpx.get(f"{running.url}/metrics", timeout=TIMEOUT).text
    served = [r.json() for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 503]
    assert len(refused) == shed and len(served) == len(expected)
    as_json = [None if c is None else c.to_json() for c in ladder]
    assert sorted(as_json.index(body["length_config"]) for body in served) == sorted(expected)
    assert sum(body["degraded"] for body in served) == sum(index > 0 for index in expected)
    for response in refused:
        assert response.json()["field"] is None and "slo-ms" in response.json()["error"]
        assert int(response.headers["retry-after"]) >= 1
    assert _metric(metrics_text, "dtb_shed_total", budget="min_speedup") == shed
    assert _metric(metrics_text, "dtb_degraded_total", budget="min_speedup") == sum(i > 0 for i in expected)


def test_past_its_slo_the_server_answers_503(answerer):
    # --slo-ms 0.001 cannot be held; an idle server still serves one request (at the fastest allowed config),
    # and while the gate holds that one on the model thread every other request finds it unanswered.
    gated = GatedAnswerer(answerer)
    app = create_app(ServeSettings(slo_ms=0.001), gated)

    async def scenario(url: str) -> list[httpx.Response]:
        posting = asyncio.create_task(_post_all(url, [{**GOOD, "min_speedup": 1.0}] * 16, concurrency=16))
        await gated.open_when_all_arrived(app, 16)
        return await posting

    with InProcessServer(app) as running:
        responses = asyncio.run(scenario(running.url))
        metrics = httpx.get(f"{running.url}/metrics", timeout=TIMEOUT).text
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 1 and codes.count(503) == 15
    fastest = [40, 20]
    assert all(r.json()["length_config"] == fastest for r in responses if r.status_code == 200)
    assert _metric(metrics, "dtb_shed_total", budget="min_speedup") == codes.count(503)


# --- shutdown --------------------------------------------------------------------------------------------------


def test_shutdown_answers_every_admitted_request(model_dir, tmp_path):
    # A 3 s batching linger (--max-wait-ms 3000, which a user can still ask for) holds all 8 requests in the
    # queue when SIGTERM arrives. tests/serve/test_batcher.py stops a batcher with the default (no linger)
    # while one batch runs and others queue behind it.
    args = ["--model", model_dir, "--precision", "fp32", "--max-wait-ms", "3000", "--max-batch-size", "64"]
    with ServerProcess(args, str(tmp_path / "serve.log")) as running:

        async def scenario():
            async with httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client:
                tasks = [asyncio.create_task(client.post("/answer", json=GOOD)) for _ in range(8)]
                for _ in range(600):  # at most 30 s
                    metrics = httpx.get(f"{running.url}/metrics", timeout=TIMEOUT).text
                    if _metric(metrics, "dtb_queue_depth") == 8:
                        break
                    await asyncio.sleep(0.05)
                running.process.terminate()
                return await asyncio.gather(*tasks)

        responses = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200] * 8
        # uvicorn re-raises the signal it handled once shutdown is complete, so the process ends by SIGTERM.
        assert running.process.wait(60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in running.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{running.url}/health", timeout=TIMEOUT)


def test_two_workers_serve_the_same_answers_and_shut_down(model_dir, answerer, tmp_path):
    args = ["--model", model_dir, "--precision", "fp32", "--workers", "2", "--max-wait-ms", "5"]
    bodies = [{"question": q, "context": c, **budget} for (q, c), budget in zip(CASES * 4, BUDGETS * 4)]
    with ServerProcess(args, str(tmp_path / "serve.log")) as running:
        # /health answers once one worker is up; wait (bounded) until both have started.
        assert wait_until(lambda: running.log().count("Started server process") >= 2, 120.0, 0.2), running.log()
        responses = asyncio.run(_post_all(running.url, bodies, concurrency=16))
        for body, response in zip(bodies, responses):
            assert response.status_code == 200, response.text
            budget = {k: v for k, v in body.items() if k not in ("question", "context")}
            _check_same_answer(response.json(), _expected(answerer, body["question"], body["context"], budget))
        running.process.terminate()
        assert running.process.wait(60) in (0, -signal.SIGTERM)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{running.url}/health", timeout=TIMEOUT)


# --- units -----------------------------------------------------------------------------------------------------


def test_admission_rule():
    costs = [30.0, 20.0, 10.0]
    assert choose_config(costs, 0.0, True, 5.0, None) == 0
    assert choose_config(costs, 0.0, True, 5.0, 100.0) == 0
    assert choose_config(costs, 70.0, False, 5.0, 100.0) == 1  # 70 + 5 + 30 > 100, 70 + 5 + 20 <= 100
    assert choose_config(costs, 85.0, False, 5.0, 100.0) == 2
    assert choose_config(costs, 90.0, False, 5.0, 100.0) is None
    assert choose_config(costs, 0.0, True, 5.0, 1.0) == 2  # idle: the fastest rather than a permanent refusal


def test_histogram_exposition_is_cumulative():
    histogram = Histogram("h_seconds", "help", (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value, budget="none")
    lines = histogram.render()
    assert 'h_seconds_bucket{budget="none",le="0.1"} 2' in lines
    assert 'h_seconds_bucket{budget="none",le="1"} 3' in lines
    assert 'h_seconds_bucket{budget="none",le="+Inf"} 4' in lines
    assert 'h_seconds_count{budget="none"} 4' in lines
    assert math.isclose(float(next(line for line in lines if line.startswith("h_seconds_sum")).split()[1]), 3.65)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"max_batch_size": 0}, "max_batch_size"), ({"slo_ms": 0}, "slo_ms"), ({"max_wait_ms": -1}, "max_wait_ms"),
     ({"port": 70000}, "port"), ({"model_dir": "/no/such/model"}, "does not exist"),
     ({"slo_ms": float("inf")}, "finite"), ({"runtime": "tensorrt"}, "runtime must be one of"),
     ({"unpatched": True, "runtime": "openvino"}, "runs in torch")],
)
def test_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        ServeSettings(**settings)


def test_cli_reports_a_missing_model(capsys):
    from dtb_ext.cli import main

    assert main(["serve", "--model", os.path.join("no", "such", "dir")]) == 2
    assert "model_dir" in capsys.readouterr().err


def test_the_openvino_runtime_serves_every_budget_with_the_torch_answers(model_dir, answerer, tmp_path):
    """`dtb serve --runtime openvino`: per-request budgets go through the exported graph's keep-rule input."""
    pytest.importorskip("openvino", reason="openvino is not installed (the openvino extra)")
    args = ["--model", model_dir, "--precision", "fp32", "--runtime", "openvino", "--max-wait-ms", "20"]
    with ServerProcess(args, str(tmp_path / "serve.log")) as running:
        requests = [{"question": q, "context": c, **budget} for (q, c), budget in zip(CASES, BUDGETS)]
        responses = asyncio.run(_post_all(running.url, requests, concurrency=4))
    for request, response in zip(requests, responses):
        assert response.status_code == 200, response.text
        budget = {k: v for k, v in request.items() if k not in ("question", "context")}
        _check_same_answer(response.json(), _expected(answerer, request["question"], request["context"], budget))
