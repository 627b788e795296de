"""bench/report.py: the markdown report of a pytest-benchmark JSON document (synthetic timings)."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
from repo_paths import REPO_ROOT

REPORT = os.path.join(REPO_ROOT, "bench", "report.py")
spec = importlib.util.spec_from_file_location("bench_report", REPORT)
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def _benchmark(fullname: str, group: str, median: float, **extra) -> dict:
    return {"fullname": fullname, "name": fullname.split("::")[-1], "group": group, "extra_info": extra,
            "stats": {"median": median, "min": median * 0.9}}


DATA = {
    "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}, "python_version": "3.11"},
    "commit_info": {"id": "0123456789abcdef", "dirty": False},
    "datetime": "2026-01-01T00:00:00",
    "benchmarks": [
        _benchmark("bench/test_bench_ops.py::test_softmax[fused-1]", "softmax B=1", 0.001, implementation="fused"),
        _benchmark("bench/test_bench_ops.py::test_softmax[softmax_only-1]", "softmax B=1", 0.002,
                   implementation="softmax_only"),
        _benchmark("bench/test_bench_model.py::test_model[minilm-B1-hf-eager]", "minilm B=1", 0.060,
                   variant="hf-eager", macs_ratio=1.0, threads=2),
        _benchmark("bench/test_bench_model.py::test_model[minilm-B1-ratio-0.5]", "minilm B=1", 0.030,
                   variant="ratio-0.5", macs_ratio=1.976, threads=2),
        _benchmark("bench/test_bench_qa.py::test_qa_sample[front-1pct]", "qa", 1.0, level="qa", variant="front-1pct",
                   f1=70.25, macs_ratio=1.5),
    ],
}


def test_report_has_machine_ratios_macs_and_f1(tmp_path):
    text = report.write_report(DATA, "make bench")
    assert "- CPU: Test CPU" in text and "- command: `make bench`" in text and "commit 0123456789" in text
    assert text.index("## ops") < text.index("## model") < text.index("## qa")
    assert "| `fused` | 1.000 | 0.900 | 2.00 |" in text  # softmax_only's median / fused's
    assert "| `ratio-0.5` | 30.000 | 27.000 | 2.00 | 1.98 |" in text  # vs hf-eager, then MACs ideal
    assert "| `front-1pct` | 1000.000 | 900.000 | 1.50 | 70.25 |" in text  # no baseline in its group


def test_machine_section_lists_the_isa_flags_the_kernels_choose_between():
    flagged = {**DATA, "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2,
                                                "flags": ["sse2", "avx512_bf16", "avx2", "amx_int8", "avx512f"]}}}
    assert "- ISA flags: avx2, avx512f, avx512_bf16, amx_int8" in report.write_report(flagged, None)
    assert "- ISA flags: not recorded" in report.write_report(DATA, None)


def test_command_line_writes_the_file_and_refuses_other_json(tmp_path, capsys):
    results, out = tmp_path / "bench.json", tmp_path / "REPORT.md"
    results.write_text(json.dumps(DATA))
    assert report.main([str(results), str(out)]) == 0
    assert out.read_text().startswith("# dtb_ext benchmark report")
    results.write_text(json.dumps({"not": "benchmarks"}))
    assert report.main([str(results), str(out)]) == 2
    assert "expected a pytest-benchmark JSON document" in capsys.readouterr().err


def test_groups_without_stats_are_left_out():
    data = {**DATA, "benchmarks": [{**DATA["benchmarks"][0], "stats": None}]}
    assert "## ops" not in report.write_report(data)


@pytest.mark.parametrize(("names", "expected"), [(["fused", "a", "b"], ["a", "b"]), (["a"], [])])
def test_ops_baselines_are_the_non_fused_chains(names, expected):
    assert report.baselines_of("ops", names) == expected


def test_interleaved_benchmarks_get_one_table_of_their_variants():
    variants = {"hf-fp32-sdpa": {"median_ms": 20.0, "round_ms": 100.0, "macs_ratio": 1.0, "f1": 68.6},
                "hf-bf16-sdpa": {"median_ms": 10.0, "round_ms": 50.0, "macs_ratio": 1.0, "f1": 68.7},
                "ours-int8-front-3pct": {"median_ms": 5.0, "round_ms": 25.0, "macs_ratio": 1.2, "f1": 67.7}}
    benchmark = _benchmark("bench/test_bench_qa.py::test_qa_interleaved[1]", "qa B=1", 0.175, level="qa",
                           variants=variants, features=50, interleaved_items=50, items_are="features")
    benchmark["stats"]["rounds"] = 3
    text = report.write_report({**DATA, "benchmarks": [benchmark]})
    assert "every variant on each of the 50 items (features) in turn, rounds: 3" in text
    assert "| variant | median ms / item | round ms | x vs hf-fp32-sdpa | x vs hf-bf16-sdpa | features/s |" in text
    assert "| `ours-int8-front-3pct` | 5.000 | 25.000 | 4.00 | 2.00 | 2000.0 | 1.20 | 67.70 |" in text


def test_a_servers_own_time_gets_its_column():
    variants = {"answer": {"median_ms": 13.0, "round_ms": 130.0},
                "serve": {"median_ms": 15.0, "round_ms": 150.0, "server_ms": 13.25, "max_wait_ms": 0.0}}
    benchmark = _benchmark("bench/test_bench_serve_idle.py::test_idle_server_against_the_answerer", "idle", 0.28,
                           level="serve", variants=variants, baselines=["answer"], interleaved_items=10)
    text = report.write_report({**DATA, "benchmarks": [benchmark]})
    assert "| variant | median ms / item | round ms | x vs answer | server ms |" in text
    assert "| `answer` | 13.000 | 130.000 | 1.00 |  |" in text
    assert "| `serve` | 15.000 | 150.000 | 0.87 | 13.250 |" in text


def _timed_calls(seed: int, items: list[str], rounds: int) -> tuple[list[tuple[str, str]], object]:
    """The (variant, item) calls of `rounds` rounds of an Interleaved timer over variants a-d, and the timer."""
    spec = importlib.util.spec_from_file_location(
        "bench_conftest", os.path.join(os.path.dirname(REPORT), "conftest.py")
    )
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    calls, ticks = [], iter(range(10_000))
    variants = {name: (lambda item, name=name: calls.append((name, item))) for name in "abcd"}
    timer = conftest.Interleaved(variants, items, clock=lambda: next(ticks), seed=seed)
    for _ in range(rounds):
        timer.run_round()
    return calls, timer


def test_interleaved_timer_runs_every_variant_once_per_item_in_shuffled_orders():
    items = [f"item{i}" for i in range(12)]
    calls, timer = _timed_calls(0, items, rounds=2)
    blocks = [calls[start:start + 4] for start in range(0, len(calls), 4)]
    assert [{item for _, item in block} for block in blocks] == [{item} for item in items * 2]
    assert all(sorted(name for name, _ in block) == list("abcd") for block in blocks)
    # Each variant follows more than one other variant (a rotation would always put it after the same one).
    predecessors = {name: {block[i - 1][0] for block in blocks for i in range(1, 4) if block[i][0] == name}
                    for name in "abcd"}
    assert all(len(before) > 1 for before in predecessors.values())
    assert _timed_calls(0, items, rounds=2)[0] == calls and _timed_calls(1, items, rounds=2)[0] != calls
    summary = timer.summary()
    assert set(summary) == set("abcd") and summary["a"] == {"median_ms": 1e3, "round_ms": 12e3, "min_round_ms": 12e3}


def test_interleaved_warm_up_runs_every_variant_on_every_item_untimed():
    spec = importlib.util.spec_from_file_location(
        "bench_conftest", os.path.join(os.path.dirname(REPORT), "conftest.py")
    )
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    calls = []
    variants = {name: (lambda item, name=name: calls.append((name, item))) for name in "ab"}
    timer = conftest.Interleaved(variants, ["x", "y", "z"])
    timer.warm_up()
    assert sorted(calls) == sorted((name, item) for name in "ab" for item in "xyz")
    assert timer.times == {"a": [], "b": []}
