"""Load benchmark of `dtb serve` on loopback: throughput and p50/p99 latency under an open-loop (Poisson) load,
at fixed budgets and at a mixed one, against the same server running the unpatched model at full length; then
the load at which that baseline breaks a 100 ms p99, and what `--slo-ms 100` holds there.

Steps, each `SECONDS` long at an offered load of `rate` requests/s (arrivals at seeded exponential gaps,
whatever the answers' latency; client-side latency from sending to the parsed answer):
1. the unpatched server (`dtb serve --unpatched`), full length, at every rate of RATES in increasing order,
   stopping after the first whose p99 passes 100 ms: that rate is the break point;
2. the patched server, no objective, at the same rates: no budget, max_f1_drop_percent 1, min_speedup 1.3 and
   a mixed load cycling through those three and latency_budget_ms 50;
3. the patched server with --slo-ms 100 at the break point: min_speedup 1.0 (every config of the front allowed,
   so requests can move along it), no budget (only shedding can help), and the mixed load.
Questions: DTB_BENCH_SERVE_QUESTIONS (default 200) of SQuAD dev-a, seed 0, cycled.

Not a pass/fail test and not part of `make bench` (which runs pytest-benchmark cases only); the numbers need a
quiet machine: the load generator shares it with the server. Run:
    .venv/bin/python -m pytest bench/test_bench_serve.py -s
Settings (environment): DTB_BENCH_SERVE_MODEL (default dtb_ext/default_model; "tiny": the tiny random model of
the tests, a quick check of the harness whose numbers mean nothing), DTB_BENCH_SERVE_SECONDS (default 20),
DTB_BENCH_SERVE_RATES (default 2,4,8,16,32,64), DTB_BENCH_SERVE_THREADS (server torch threads, default all
cores), DTB_BENCH_SERVE_PRECISION (both servers', default auto: bf16 where the CPU runs it natively, the
strongest plain baseline), DTB_BENCH_SERVE_OUT (default runs/bench-serve.json), DTB_BENCH_SERVE_START_TIMEOUT
(seconds a server may take to load, default 300). Quick check:
    DTB_BENCH_SERVE_MODEL=tiny DTB_BENCH_SERVE_SECONDS=1 DTB_BENCH_SERVE_RATES=10,40 \\
        .venv/bin/python -m pytest bench/test_bench_serve.py -s
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import sys
import time
from typing import Any

import httpx
import pytest

from dtb_ext.qa.data import default_squad_file, load_squad

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))  # the server-process helpers shared with the tests

from serving import ServerProcess, save_tiny_model_with_front  # noqa: E402

MODEL = os.environ.get("DTB_BENCH_SERVE_MODEL", os.path.join(REPO_ROOT, "dtb_ext", "default_model"))
SECONDS = float(os.environ.get("DTB_BENCH_SERVE_SECONDS", "20"))
RATES = [float(rate) for rate in os.environ.get("DTB_BENCH_SERVE_RATES", "2,4,8,16,32,64").split(",")]
THREADS = int(os.environ.get("DTB_BENCH_SERVE_THREADS", str(os.cpu_count() or 1)))
QUESTIONS = int(os.environ.get("DTB_BENCH_SERVE_QUESTIONS", "200"))
PRECISION = os.environ.get("DTB_BENCH_SERVE_PRECISION", "auto")
START_TIMEOUT_S = float(os.environ.get("DTB_BENCH_SERVE_START_TIMEOUT", "300"))
OUT = os.environ.get("DTB_BENCH_SERVE_OUT", os.path.join(REPO_ROOT, "runs", "bench-serve.json"))
P99_OBJECTIVE_MS = 100.0
DEV_A = default_squad_file("dev-a-v1.1.json")
FIXED_BUDGETS = {"none": {}, "f1-drop-1%": {"max_f1_drop_percent": 1.0}, "speedup-1.3": {"min_speedup": 1.3}}
MIXED = [{}, {"max_f1_drop_percent": 1.0}, {"min_speedup": 1.3}, {"latency_budget_ms": 50.0}]

pytestmark = pytest.mark.skipif(not os.path.isfile(DEV_A), reason="shared SQuAD data not found")


def _questions() -> list[dict[str, str]]:
    examples = load_squad(DEV_A)
    chosen = random.Random(0).sample(range(len(examples)), min(QUESTIONS, len(examples)))
    return [{"question": examples[i].question, "context": examples[i].context} for i in chosen]


def _percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))]


async def _offer_load(url: str, rate: float, seconds: float, bodies: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Send requests at `rate`/s (exponential gaps) for `seconds`, whatever the answers' latency; measure each."""
    gaps = random.Random(seed)
    count = max(1, int(rate * seconds))
    latencies, statuses, degraded = [], [], 0
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60.0), limits=limits) as client:

        async def one(body: dict[str, Any]) -> None:
            nonlocal degraded
            sent = time.perf_counter()
            response = await client.post("/answer", json=body)
            result = response.json()
            statuses.append(response.status_code)
            if response.status_code == 200:
                latencies.append(1e3 * (time.perf_counter() - sent))
                degraded += bool(result.get("degraded"))

        started = time.perf_counter()
        tasks = []
        next_send = started
        for index in range(count):
            await asyncio.sleep(max(0.0, next_send - time.perf_counter()))
            tasks.append(asyncio.create_task(one(bodies[index % len(bodies)])))
            next_send += gaps.expovariate(rate)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    answered = statuses.count(200)
    return {
        "offered_rps": rate, "requests": count, "throughput_rps": answered / elapsed,
        "p50_ms": _percentile(latencies, 0.50), "p99_ms": _percentile(latencies, 0.99),
        "shed_percent": 100.0 * statuses.count(503) / count, "degraded_percent": 100.0 * degraded / max(1, answered),
        "other_errors": len(statuses) - answered - statuses.count(503),
    }


def _with_budgets(questions: list[dict[str, str]], budgets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**question, **budgets[index % len(budgets)]} for index, question in enumerate(questions)]


def _run(server: ServerProcess, rate: float, bodies: list[dict[str, Any]], case: str, seed: int) -> dict[str, Any]:
    # A short warm-up at the same load, so that the latency model and the allocator have settled.
    asyncio.run(_offer_load(server.url, rate, min(2.0, SECONDS / 4), bodies, seed + 1000))
    result = {"case": case, **asyncio.run(_offer_load(server.url, rate, SECONDS, bodies, seed))}
    print(_row(result), flush=True)
    return result


def _row(result: dict[str, Any]) -> str:
    def ms(value):
        return "-" if value is None else f"{value:.1f}"

    return (f"{result['case']:<34} {result['offered_rps']:>7.1f} {result['throughput_rps']:>8.2f} "
            f"{ms(result['p50_ms']):>8} {ms(result['p99_ms']):>8} {result['shed_percent']:>6.1f} "
            f"{result['degraded_percent']:>6.1f}")


def _server(args: list[str], log_path: Any) -> ServerProcess:
    return ServerProcess(args, str(log_path), start_timeout_s=START_TIMEOUT_S, threads=THREADS)


def test_serving_load(tmp_path):
    model = save_tiny_model_with_front(str(tmp_path / "tiny")) if MODEL == "tiny" else MODEL
    if not os.path.isfile(os.path.join(model, "config.json")):
        pytest.skip(f"no QA model at {model}")
    questions = _questions()
    common = ["--model", model, "--precision", PRECISION, "--max-batch-size", "32", "--max-wait-ms", "5"]
    results: list[dict[str, Any]] = []
    print(f"\n{'case':<34} {'offered':>7} {'done/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'503 %':>6} {'degr %':>6}")

    swept, break_rate = [], None
    with _server(common + ["--unpatched"], tmp_path / "unpatched.log") as server:
        for step, rate in enumerate(sorted(RATES)):
            results.append(_run(server, rate, questions, "unpatched, full length", step))
            swept.append(rate)
            if results[-1]["p99_ms"] is None or results[-1]["p99_ms"] > P99_OBJECTIVE_MS:
                break_rate = rate
                break
    with _server(common, tmp_path / "patched.log") as server:
        for step, rate in enumerate(swept):
            for name, budget in FIXED_BUDGETS.items():
                results.append(_run(server, rate, _with_budgets(questions, [budget]), f"patched, {name}", step))
            results.append(_run(server, rate, _with_budgets(questions, MIXED), "patched, mixed", step))
    slo_rate = break_rate if break_rate is not None else swept[-1]
    slo_args = common + ["--slo-ms", str(P99_OBJECTIVE_MS)]
    with _server(slo_args, tmp_path / "slo.log") as server:
        slo_cases = {"min_speedup 1.0": [{"min_speedup": 1.0}], "no budget": [{}], "mixed": MIXED}
        for name, budgets in slo_cases.items():
            results.append(_run(server, slo_rate, _with_budgets(questions, budgets), f"--slo-ms 100, {name}", 0))

    summary = {
        "model": model, "precision": PRECISION, "seconds_per_step": SECONDS, "server_threads": THREADS,
        "rates": sorted(RATES),
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "full_length_breaks_p99_100ms_at_rps": break_rate, "slo_rate_rps": slo_rate, "results": results,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as handle:
        json.dump(summary, handle, indent=1)
    print(f"full length (unpatched) breaks a {P99_OBJECTIVE_MS:.0f} ms p99 at "
          f"{'no rate up to ' + str(max(RATES)) if break_rate is None else str(break_rate)} req/s; results in {OUT}")
    assert all(result["other_errors"] == 0 for result in results)
    assert all(result["throughput_rps"] > 0 for result in results)
