"""compare_fronts: each model's best F1 at every speedup of two fronts, and which front weakly dominates."""
from __future__ import annotations

import pytest

from dtb_ext.search.compare import best_f1_at, compare_fronts, main
from dtb_ext.search.front import Front

FULL = (1.0, 1.0)
SAME_DATA = {"questions_sha256": "q", "max_seq_length": 384, "doc_stride": 128, "max_query_length": 64,
             "cost_model": "macs", "space": "ratios"}


def _front(records: list[tuple[tuple[float, float], float]], identity: dict | None = None) -> Front:
    """A ratio front whose MACs are the sum of the ratios (full length: 2.0), so speedup = 2 / sum."""
    results = [(config, dict(f1=f1, exact_match=f1 - 10, macs=sum(config), latency_ms=None)) for config, f1 in records]
    return Front.build("macs", results, FULL, identity or SAME_DATA, space="ratios")


OLD = _front([(FULL, 70.0), ((1.0, 0.6), 69.5), ((0.8, 0.5), 66.0)])


def test_best_f1_at_takes_the_best_point_at_least_that_fast():
    points = list(OLD.front)
    assert best_f1_at(points, 1.0) == 70.0
    assert best_f1_at(points, 1.2) == 69.5
    assert best_f1_at(points, 1.3) == 66.0
    assert best_f1_at(points, 1.6) is None


def test_a_front_better_everywhere_beats_the_old_one():
    new = _front([(FULL, 72.0), ((1.0, 0.6), 71.0), ((0.8, 0.5), 66.5), ((0.5, 0.5), 60.0)])
    comparison = compare_fronts(OLD, new)
    assert comparison.new_beats_old and not comparison.old_beats_new
    assert [row.speedup for row in comparison.rows] == pytest.approx([1.0, 2 / 1.6, 2 / 1.3, 2.0])
    assert [(row.old_f1, row.new_f1) for row in comparison.rows] == [
        (70.0, 72.0), (69.5, 71.0), (66.0, 66.5), (None, 60.0)]
    table = comparison.to_markdown("v4", "v5")
    assert "| v4 F1 | v5 F1 | v5 - v4 |" in table and "| 1.250 | 69.50 | 71.00 | +1.50 |" in table
    assert "| 2.000 | - | 60.00 |  |" in table


def test_a_front_that_loses_somewhere_does_not_beat():
    # Better at full length, worse at the fastest old point: neither front dominates.
    new = _front([(FULL, 72.0), ((1.0, 0.6), 71.0), ((0.8, 0.5), 65.0)])
    comparison = compare_fronts(OLD, new)
    assert not comparison.new_beats_old and not comparison.old_beats_new


def test_a_point_at_f1_zero_is_matched_by_a_point_at_f1_zero():
    # F1 0 is a real score (not "no point"): a front whose fastest point scores 0 still matches one that does too.
    old = _front([(FULL, 70.0), ((0.5, 0.5), 0.0)])
    new = _front([(FULL, 71.0), ((0.5, 0.5), 0.0)])
    assert compare_fronts(old, new).new_beats_old


def test_fronts_equal_beat_each_other():
    comparison = compare_fronts(OLD, OLD)
    assert comparison.new_beats_old and comparison.old_beats_new


def test_fronts_of_different_questions_are_refused():
    other = _front([(FULL, 72.0)], {**SAME_DATA, "questions_sha256": "other"})
    with pytest.raises(ValueError, match="same questions.*questions_sha256: 'q' vs 'other'"):
        compare_fronts(OLD, other)


def test_main_prints_the_table_and_the_verdict(tmp_path, capsys):
    new = _front([(FULL, 72.0), ((1.0, 0.6), 71.0), ((0.8, 0.5), 66.5)])
    old_path = OLD.save(str(tmp_path / "old"))["json"]
    new_path = new.save(str(tmp_path / "new"))["json"]
    assert main([old_path, new_path, "--names", "v4,v5"]) == 0
    out = capsys.readouterr().out
    assert "| 1.000 | 70.00 | 72.00 | +2.00 |" in out and "v5 beats v4 (weakly dominates its front): True" in out


def test_main_reports_a_missing_file(tmp_path, capsys):
    assert main([str(tmp_path / "none.json"), str(tmp_path / "none.json")]) == 2
    assert "error:" in capsys.readouterr().err
