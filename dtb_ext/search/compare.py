"""Compare the fronts of two models searched on the same questions: which keeps more F1 at each cost.

A model replaces another only if its front beats the other's on the search data (never on the data a pick is
decided or reported on). `compare_fronts(old, new)` checks that both fronts were scored on the same questions
under the same cost model and space, then, for every speedup on either front, gives each model's best search-part
F1 at that speedup or more, and says whether every point of one front is matched or beaten (weakly dominated) by a
point of the other.

`python -m dtb_ext.search.compare OLD/front.json NEW/front.json` prints the table in Markdown.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Sequence

from dtb_ext.search.front import Front, Point, load_front

# Identity fields two fronts must share to be compared point for point: the questions, their windows and the cost.
_SAME_DATA_KEYS = ("questions_sha256", "max_seq_length", "doc_stride", "max_query_length", "cost_model", "space")


@dataclass(frozen=True)
class ComparisonRow:
    """The best search-part F1 of each front among its points with speedup >= `speedup` (None: none that fast)."""

    speedup: float
    old_f1: float | None
    new_f1: float | None


@dataclass(frozen=True)
class FrontComparison:
    """rows: by increasing speedup, one per distinct speedup of either front. new_beats_old: every old front point
    is weakly dominated by a new one (F1 at least as high at a speedup at least as high); old_beats_new the same
    the other way round. Both are True only when the fronts are equal."""

    rows: tuple[ComparisonRow, ...]
    new_beats_old: bool
    old_beats_new: bool

    def to_markdown(self, old_name: str = "old", new_name: str = "new") -> str:
        """A Markdown table: speedup, each front's best F1 at that speedup or more, and new minus old."""
        lines = [f"| MACs speedup at least | {old_name} F1 | {new_name} F1 | {new_name} - {old_name} |",
                 "|---|---|---|---|"]
        for row in self.rows:
            gain = "" if row.old_f1 is None or row.new_f1 is None else f"{row.new_f1 - row.old_f1:+.2f}"
            lines.append(f"| {row.speedup:.3f} | {_cell(row.old_f1)} | {_cell(row.new_f1)} | {gain} |")
        return "\n".join(lines)


def best_f1_at(points: Sequence[Point], speedup: float) -> float | None:
    """The highest search-part F1 among `points` with speedup >= `speedup`, or None when none is that fast."""
    scores = [point.f1 for point in points if point.speedup >= speedup]
    return max(scores) if scores else None


def compare_fronts(old: Front, new: Front) -> FrontComparison:
    """Each front's best F1 at every speedup of either front, and which front weakly dominates the other.

    Raises ValueError when the fronts were not scored on the same questions, windows, cost model and space: then
    their F1 and speedups do not measure the same thing.
    """
    differing = [key for key in _SAME_DATA_KEYS if old.identity.get(key) != new.identity.get(key)]
    if differing:
        details = ", ".join(f"{key}: {old.identity.get(key)!r} vs {new.identity.get(key)!r}" for key in differing)
        raise ValueError(f"the fronts must be searched on the same questions and cost model to be compared; "
                         f"they differ in {details}")
    old_points, new_points = _with_full_length(old), _with_full_length(new)
    speedups = sorted({point.speedup for point in old_points + new_points})
    rows = tuple(ComparisonRow(speedup, best_f1_at(old_points, speedup), best_f1_at(new_points, speedup))
                 for speedup in speedups)
    return FrontComparison(rows, _weakly_dominates(new_points, old_points), _weakly_dominates(old_points, new_points))


def _with_full_length(front: Front) -> list[Point]:
    """The front's points and its full-length point (which a front need not list)."""
    return list(front.front) + [front.full_length]


def _weakly_dominates(winners: Sequence[Point], others: Sequence[Point]) -> bool:
    """Every point of `others` has a point of `winners` at least as fast with at least its F1."""
    best = [best_f1_at(winners, point.speedup) for point in others]
    return all(f1 is not None and f1 >= point.f1 for f1, point in zip(best, others))


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtb_ext.search.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the current model's front.json")
    parser.add_argument("new", help="the candidate's front.json, searched on the same questions")
    parser.add_argument("--names", default="old,new", help="column names of the two models (default: old,new)")
    args = parser.parse_args(argv)
    names = args.names.split(",")
    if len(names) != 2:
        parser.error(f"--names takes two comma-separated names, got {args.names!r}")
    try:
        comparison = compare_fronts(load_front(args.old), load_front(args.new))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(comparison.to_markdown(*names))
    print(f"\n{names[1]} beats {names[0]} (weakly dominates its front): {comparison.new_beats_old}")
    print(f"{names[0]} beats {names[1]}: {comparison.old_beats_new}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
