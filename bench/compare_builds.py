"""Compare two builds of dtb_ext on the op benchmarks (bench/test_bench_ops.py, the fused kernels only).

Two builds cannot be loaded into one process (both register the `dtb` operator library), so the benchmark file
runs from each checkout in turn, alternating `--runs` times, with the same Python; machine load then hits both
builds alike. Per case it prints the median over runs of each build's median (and minimum) and their ratio
new / old, then the geometric mean and range of the ratios.

    python bench/compare_builds.py OLD_CHECKOUT NEW_CHECKOUT [--runs 5] [--threads 1] [-k EXPR]

Each checkout needs its extension built in place (`python setup.py build_ext --inplace`, or an editable install
of it); the script checks that each run imports its own checkout's dtb_ext._C. Timed in CPU time of one thread
(`--benchmark-timer=time.process_time`, DTB_BENCH_THREADS), the measurement other processes disturb least.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict


def extension_of(checkout: str) -> str:
    """Path of the dtb_ext._C that a process started in `checkout` imports."""
    code = "import dtb_ext.ops as ops; assert ops.has_kernels(), 'no compiled kernels'; print(ops._C.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def run_once(checkout: str, threads: int, selection: str, out_json: str) -> dict[str, tuple[float, float]]:
    """One run of the benchmark file from `checkout`: case name -> (median, minimum) seconds."""
    env = {**os.environ, "DTB_BENCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "pytest", "bench/test_bench_ops.py", "-q", "-p", "no:cacheprovider",
               "--benchmark-only", "--benchmark-timer=time.process_time", f"--benchmark-json={out_json}",
               "-k", selection]
    subprocess.run(command, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(out_json, encoding="utf-8") as handle:
        report = json.load(handle)
    return {case["name"]: (case["stats"]["median"], case["stats"]["min"]) for case in report["benchmarks"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="checkout of the baseline build")
    parser.add_argument("new", help="checkout of the build to compare")
    parser.add_argument("--runs", type=int, default=5, help="alternating runs per build")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (DTB_BENCH_THREADS)")
    parser.add_argument("-k", dest="selection", default="fused and not cuda", help="pytest -k selection of cases")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    builds = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    for name, checkout in builds.items():
        extension = extension_of(checkout)
        if not os.path.realpath(extension).startswith(os.path.realpath(checkout) + os.sep):
            raise SystemExit(f"{name}: a process in {checkout} imports {extension}, not its own build")
        print(f"{name}: {extension}")

    times: dict[str, dict[str, list[tuple[float, float]]]] = {name: defaultdict(list) for name in builds}
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(args.runs):
            for name, checkout in builds.items():
                measured = run_once(checkout, args.threads, args.selection, os.path.join(scratch, f"{name}.json"))
                for case, pair in measured.items():
                    times[name][case].append(pair)
                print(f"run {run + 1}/{args.runs} {name}: {len(measured)} cases", file=sys.stderr)

    cases = sorted(set(times["old"]) & set(times["new"]))
    print(f"{'case':<70} {'old ms':>9} {'new ms':>9} {'new/old':>8} {'min new/old':>11}")
    ratios, min_ratios = [], []
    for case in cases:
        old_median = statistics.median(m for m, _ in times["old"][case])
        new_median = statistics.median(m for m, _ in times["new"][case])
        old_min = statistics.median(least for _, least in times["old"][case])
        new_min = statistics.median(least for _, least in times["new"][case])
        ratios.append(new_median / old_median)
        min_ratios.append(new_min / old_min)
        print(f"{case:<70} {old_median * 1e3:9.3f} {new_median * 1e3:9.3f} {ratios[-1]:8.3f} {min_ratios[-1]:11.3f}")
    for label, values in (("median", ratios), ("minimum", min_ratios)):
        mean = math.exp(statistics.fmean(math.log(value) for value in values))
        print(f"new/old of the {label}s over {len(values)} cases and {args.runs} runs each: geometric mean "
              f"{mean:.3f}, range {min(values):.3f}-{max(values):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
