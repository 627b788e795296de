"""Write the benchmark report (markdown) from a pytest-benchmark JSON file.

    .venv/bin/python bench/report.py runs/bench.json bench/REPORT.md [--command "how the JSON was made"]

One section per level (ops, layer, model, qa), one table per benchmark group: every implementation's median and
minimum time, its speedup against each baseline of the group (baseline median / its median, so > 1 is faster),
the ideal speedup from MACs where the benchmark recorded one, F1 where it did, and a server's own time per
request where it did (the idle-server benchmark). Baselines: for ops, every implementation other than `fused`
(the PyTorch chains); elsewhere `hf-eager`, `hf-sdpa`, `onnxruntime` and `patched-full` (the dynamic model at
full length) when present. Interleaved benchmarks (one benchmark that times
every variant item by item, `extra_info["variants"]`) get one table of their variants, with speedups against
HF fp32, HF bf16 and ORT int8 where present. The header describes the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from collections import defaultdict
from typing import Any, Callable

LEVELS = ("ops", "layer", "model", "qa")
BASELINES = ("hf-eager", "hf-sdpa", "onnxruntime", "patched-full")
# Baselines of interleaved benchmarks (one benchmark timing every variant, extra_info["variants"]) unless the
# benchmark names its own (extra_info["baselines"]).
INTERLEAVED_BASELINES = ("hf-fp32-sdpa", "hf-bf16-sdpa", "ort-int8")


def level_of(benchmark: dict[str, Any]) -> str:
    """ops/layer/model/qa from extra_info["level"], else from the test file's name (test_bench_<level>.py)."""
    level = benchmark.get("extra_info", {}).get("level")
    if level:
        return level
    match = re.search(r"test_bench_(\w+)\.py", benchmark.get("fullname", ""))
    return match.group(1) if match else "other"


def implementation_of(benchmark: dict[str, Any]) -> str:
    """The row name: extra_info variant or implementation, else the test's parameter id."""
    info = benchmark.get("extra_info", {})
    name = info.get("variant") or info.get("implementation")
    if name:
        return str(name)
    match = re.search(r"\[(.*)\]$", benchmark.get("name", ""))
    return match.group(1) if match else benchmark.get("name", "?")


def baselines_of(level: str, names: list[str]) -> list[str]:
    if level == "ops":
        return [name for name in names if name != "fused"] if "fused" in names else []
    return [name for name in BASELINES if name in names]


def cpu_model(machine_info: dict[str, Any]) -> str:
    brand = (machine_info.get("cpu") or {}).get("brand_raw")
    if brand:
        return brand
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The instruction sets the kernels and oneDNN's bf16/int8 GEMMs choose between, as /proc/cpuinfo names them.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
             "amx_int8")


def isa_flags(machine: dict[str, Any]) -> str:
    """The ISA_FLAGS the benchmarked CPU has (from pytest-benchmark's machine_info), in ISA_FLAGS order."""
    flags = set(machine.get("cpu", {}).get("flags", []))
    if not flags:
        return "not recorded"
    return ", ".join(flag for flag in ISA_FLAGS if flag in flags) or "none of " + ", ".join(ISA_FLAGS)


def machine_section(data: dict[str, Any], command: str | None) -> list[str]:
    machine = data.get("machine_info", {})
    threads = sorted({b["extra_info"]["threads"] for b in data["benchmarks"] if "threads" in b.get("extra_info", {})})
    kernels = sorted({b["extra_info"]["kernels"] for b in data["benchmarks"] if "kernels" in b.get("extra_info", {})})
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not importable where the report was written"
    lines = [
        "## Machine and run",
        "",
        f"- CPU: {cpu_model(machine)}; {os.cpu_count()} logical cores visible "
        f"({machine.get('cpu', {}).get('count', '?')} per pytest-benchmark)",
        f"- ISA flags: {isa_flags(machine)}",
        f"- torch {torch_version} (of the environment that wrote this report), Python "
        f"{machine.get('python_version', platform.python_version())}, {machine.get('system', platform.system())} "
        f"{machine.get('release', '')}",
        f"- torch threads during the run: {', '.join(map(str, threads)) or 'not recorded'}; compiled dtb kernels: "
        f"{', '.join(map(str, kernels)) or 'not recorded'}",
        f"- run at {data.get('datetime', '?')}, commit {str(data.get('commit_info', {}).get('id', '?'))[:10]}"
        + (" (uncommitted changes)" if data.get("commit_info", {}).get("dirty") else ""),
    ]
    if command:
        lines.append(f"- command: `{command}`")
    return lines + [""]


def quality_columns(infos: list[dict[str, Any]]) -> tuple[list[str], Callable[[dict[str, Any]], list[str]]]:
    """The optional `MACs ideal x`, `F1` and `server ms` (a server's own median ms per request, arrival to answer)
    columns of a table whose rows have these fields: their headers, and a function from one row's fields to its
    cells (empty where the row lacks the field)."""
    columns = [(key, title, form) for key, title, form in
               (("macs_ratio", "MACs ideal x", "{:.2f}"), ("f1", "F1", "{:.2f}"), ("server_ms", "server ms", "{:.3f}"))
               if any(key in info for info in infos)]

    def cells(info: dict[str, Any]) -> list[str]:
        return [form.format(info[key]) if key in info else "" for key, _, form in columns]

    return [title for _, title, _ in columns], cells


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def interleaved_table(group: str, benchmark: dict[str, Any]) -> list[str]:
    """One interleaved benchmark: a row per variant with its median ms per item, its median round (all items),
    its speedup against each baseline present (baseline round / this round), features/s, MACs ideal and F1."""
    info = benchmark.get("extra_info", {})
    variants: dict[str, dict[str, Any]] = info["variants"]
    baselines = [name for name in info.get("baselines", INTERLEAVED_BASELINES) if name in variants]
    features = info.get("features")
    quality_header, quality_cells = quality_columns(list(variants.values()))
    header = ["variant", "median ms / item", "round ms"] + [f"x vs {name}" for name in baselines]
    header += (["features/s"] if features else []) + quality_header
    rows = []
    for name, v in variants.items():
        cells = [f"`{name}`", f"{v['median_ms']:.3f}", f"{v['round_ms']:.3f}"]
        cells += [f"{variants[base]['round_ms'] / v['round_ms']:.2f}" for base in baselines]
        cells += [f"{features / (v['round_ms'] / 1e3):.1f}"] if features else []
        rows.append(cells + quality_cells(v))
    note = (f"Interleaved: every variant on each of the {info.get('interleaved_items', '?')} items "
            f"({info.get('items_are', 'item')}) in turn, rounds: {benchmark['stats'].get('rounds', '?')}; medians "
            "per variant.")
    return [f"### {group}", "", note, "", *markdown_table(header, rows), ""]


def group_table(level: str, group: str, benchmarks: list[dict[str, Any]]) -> list[str]:
    interleaved = [b for b in benchmarks if "variants" in b.get("extra_info", {})]
    if interleaved:
        return [line for b in interleaved for line in interleaved_table(group, b)]
    by_name = {implementation_of(b): b for b in benchmarks}
    baselines = baselines_of(level, list(by_name))
    quality_header, quality_cells = quality_columns([b.get("extra_info", {}) for b in benchmarks])
    header = ["implementation", "median ms", "min ms"] + [f"x vs {name}" for name in baselines] + quality_header
    rows = []
    for name, benchmark in by_name.items():
        stats = benchmark["stats"]
        cells = [f"`{name}`", f"{stats['median'] * 1e3:.3f}", f"{stats['min'] * 1e3:.3f}"]
        cells += [f"{by_name[base]['stats']['median'] / stats['median']:.2f}" for base in baselines]
        rows.append(cells + quality_cells(benchmark.get("extra_info", {})))
    return [f"### {group}", "", *markdown_table(header, rows), ""]


def write_report(data: dict[str, Any], command: str | None = None) -> str:
    """The markdown report of a pytest-benchmark JSON document."""
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ValueError("expected a pytest-benchmark JSON document with a 'benchmarks' list")
    by_level: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for benchmark in data["benchmarks"]:
        if benchmark.get("stats") is None:
            continue
        by_level[level_of(benchmark)][benchmark.get("group") or benchmark["name"]].append(benchmark)
    lines = [
        "# dtb_ext benchmark report",
        "",
        "Written by `bench/report.py` from pytest-benchmark's JSON. Times are per call (one forward, or one pass "
        "over the QA sample); `x vs B` = B's median / this median (> 1: faster than B); `MACs ideal x` = full-"
        "length MACs / this variant's MACs, the speedup a perfect implementation would reach.",
        "",
        *machine_section(data, command),
    ]
    for level in [*LEVELS, *sorted(set(by_level) - set(LEVELS))]:
        if level not in by_level:
            continue
        lines += [f"## {level}", ""]
        for group in sorted(by_level[level]):
            lines += group_table(level, group, by_level[level][group])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write bench/REPORT.md from a pytest-benchmark JSON file.")
    parser.add_argument("results", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("report", nargs="?", default=os.path.join(os.path.dirname(__file__), "REPORT.md"))
    parser.add_argument("--command", default=None, help="the command that produced the JSON, quoted in the report")
    args = parser.parse_args(argv)
    try:
        with open(args.results) as handle:
            data = json.load(handle)
        text = write_report(data, args.command)
    except (OSError, json.JSONDecodeError, ValueError) as error:
        print(f"bench/report.py: error: {args.results}: {error}", file=sys.stderr)
        return 2
    with open(args.report, "w") as handle:
        handle.write(text + "\n")
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
