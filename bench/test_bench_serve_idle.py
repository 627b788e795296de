"""An idle `dtb serve` against `QuestionAnswerer.answer` in the same process: what a lone request pays for HTTP,
the event loop and the hand-over to the model thread, and what a batching linger adds (pytest-benchmark,
interleaved; reported, not pass/fail).

One QuestionAnswerer, built as `dtb serve` builds it (default settings: the bundled model, precision auto, i.e.
bf16 where the CPU runs it natively), serves two uvicorn servers on 127.0.0.1 in this process: `serve` with the
default settings (`--max-wait-ms 0`: a batch starts as soon as the model thread is free) and `serve-wait-5ms`
with `--max-wait-ms 5`, the default before 2026-12-05 (every batch waits 5 ms for company, so an idle server
paid it on every request). Items: DTB_BENCH_SERVE_IDLE_QUESTIONS questions of SQuAD dev-a (default 48, seed 0),
each asked at full length; rounds: DTB_BENCH_SERVE_IDLE_ROUNDS (default 5). Within a round each question goes
to each variant in turn (shuffled order), one request at a time, so the servers are always idle when a request
arrives:
- `answer`: `QuestionAnswerer.answer(question, context)` (tokenising, the forward passes, the span);
- `serve`, `serve-wait-5ms`: one POST /answer over a keep-alive HTTP connection (httpx), timed by the client
  from sending to the parsed reply. `extra_info["variants"][name]["server_ms"]` is the median of the server's
  own `ms` (arrival in the handler to the answer), the figure the idle-server target compares with `answer`.

Run (the numbers need a quiet machine):
    .venv/bin/python -m pytest bench/test_bench_serve_idle.py --benchmark-only -s
"""
from __future__ import annotations

import os
import random
import statistics
import sys
from typing import Any

import httpx
import pytest

from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from dtb_ext.qa.data import default_squad_file, load_squad
from dtb_ext.serve.app import answerer_for, create_app
from dtb_ext.serve.settings import ServeSettings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from serving import InProcessServer  # noqa: E402  (the in-process server helper shared with the tests)

QUESTIONS = int(os.environ.get("DTB_BENCH_SERVE_IDLE_QUESTIONS", "48"))
ROUNDS = int(os.environ.get("DTB_BENCH_SERVE_IDLE_ROUNDS", "5"))
OLD_DEFAULT_WAIT_MS = 5.0
DEV_A = default_squad_file("dev-a-v1.1.json")

pytestmark = [
    pytest.mark.skipif(not os.path.isfile(DEV_A), reason="shared SQuAD data not found"),
    pytest.mark.skipif(not os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, "config.json")),
                       reason=f"no QA model at {DEFAULT_MODEL_DIR}"),
]


def _questions() -> list[tuple[str, str]]:
    examples = load_squad(DEV_A)
    chosen = random.Random(0).sample(range(len(examples)), min(QUESTIONS, len(examples)))
    return [(examples[i].question, examples[i].context) for i in chosen]


def test_idle_server_against_the_answerer(time_interleaved, benchmark):
    settings = ServeSettings()
    answerer = answerer_for(settings)
    answerer.calibrate()
    servers = {"serve": settings.max_wait_ms, "serve-wait-5ms": OLD_DEFAULT_WAIT_MS}
    server_ms: dict[str, list[float]] = {name: [] for name in servers}

    with InProcessServer(create_app(settings, answerer)) as new, InProcessServer(
            create_app(ServeSettings(max_wait_ms=OLD_DEFAULT_WAIT_MS), answerer)) as old, httpx.Client(
            timeout=httpx.Timeout(60.0)) as client:
        urls = {"serve": new.url, "serve-wait-5ms": old.url}

        def post(name: str):
            def send(item: tuple[str, str]) -> None:
                reply = client.post(f"{urls[name]}/answer", json={"question": item[0], "context": item[1]})
                reply.raise_for_status()
                server_ms[name].append(reply.json()["ms"])
            return send

        variants: dict[str, Any] = {"answer": lambda item: answerer.answer(*item)}
        variants.update({name: post(name) for name in servers})
        items = _questions()
        summary = time_interleaved(variants, items, ROUNDS)

    answer_ms = summary["answer"]["median_ms"]
    for name, wait_ms in servers.items():
        timed = server_ms[name][len(items):]  # the warm-up's calls come first
        summary[name].update(max_wait_ms=wait_ms, server_ms=statistics.median(timed))
    benchmark.extra_info.update(level="serve", baselines=["answer"], items_are="question",
                                precision=answerer.precision)
    print(f"\nidle server, {len(items)} questions x {ROUNDS} rounds, {answerer.precision}: answer() {answer_ms:.2f} ms")
    for name in servers:
        client_ms, server = summary[name]["median_ms"], summary[name]["server_ms"]
        print(f"{name:<16} client {client_ms:7.2f} ms ({client_ms - answer_ms:+.2f}), "
              f"server {server:7.2f} ms ({server - answer_ms:+.2f})")
