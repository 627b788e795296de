"""Paired-bootstrap drop intervals and the pick rule built on them, on synthetic per-question scores."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dtb_ext.search.front import Front, load_front
from dtb_ext.search.paired import BootstrapSettings, paired_drop_interval
from dtb_ext.search.pick import describe_choice, pick
from repo_paths import TEST_DATA_DIR


def _scores_with_flips(n: int, flip_down: float, flip_up: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-length per-question F1 (0 or 100, 70 % right) and a config that loses a fraction `flip_down` of the
    right answers and gains a fraction `flip_up` of the wrong ones."""
    rng = np.random.default_rng(seed)
    full = np.where(rng.random(n) < 0.7, 100.0, 0.0)
    config = full.copy()
    draws = rng.random(n)
    config[(full == 100.0) & (draws < flip_down)] = 0.0
    config[(full == 0.0) & (draws < flip_up)] = 100.0
    return full, config


def test_interval_is_deterministic_for_a_seed_and_changes_with_it():
    full, config = _scores_with_flips(500, 0.05, 0.02, seed=1)
    config = config * np.random.default_rng(0).uniform(0.8, 1.0, 500)  # partial F1: no lattice of means
    first = paired_drop_interval(full, config, BootstrapSettings(seed=3))
    assert first == paired_drop_interval(full, config, BootstrapSettings(seed=3))
    assert first != paired_drop_interval(full, config, BootstrapSettings(seed=4))
    assert first.estimate == pytest.approx(full.mean() - config.mean())
    assert first.low < first.estimate < first.high
    assert first.reference_f1 == pytest.approx(full.mean()) and first.n == 500


def test_bound_shrinks_with_more_questions():
    widths = []
    for n in (200, 800, 3200):
        full, config = _scores_with_flips(n, 0.05, 0.02, seed=2)
        interval = paired_drop_interval(full, config)
        widths.append(interval.high - interval.estimate)
    assert widths[0] > widths[1] > widths[2] > 0
    # the standard error goes as 1/sqrt(n): four times the questions, about half the width
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.25)


def test_pairing_is_what_makes_the_interval_tight():
    """The same two score vectors unpaired (the config's questions shuffled) give a much wider interval."""
    full, config = _scores_with_flips(1000, 0.03, 0.01, seed=5)
    paired = paired_drop_interval(full, config)
    unpaired = paired_drop_interval(full, np.random.default_rng(0).permutation(config))
    assert (paired.high - paired.low) * 2.5 < unpaired.high - unpaired.low


def test_higher_confidence_gives_a_higher_upper_bound():
    full, config = _scores_with_flips(400, 0.05, 0.02, seed=6)
    bounds = [paired_drop_interval(full, config, BootstrapSettings(confidence=c)).high for c in (0.8, 0.9, 0.99)]
    assert bounds[0] < bounds[1] < bounds[2]


def test_identical_configs_have_a_zero_interval_and_bad_input_is_refused():
    full, _ = _scores_with_flips(50, 0.0, 0.0, seed=7)
    same = paired_drop_interval(full, full)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="one F1 per question"):
        paired_drop_interval(full, full[:-1])
    with pytest.raises(ValueError, match="at least one question"):
        paired_drop_interval([], [])
    with pytest.raises(ValueError, match="confidence"):
        BootstrapSettings(confidence=0.4)
    assert paired_drop_interval(np.zeros(5), np.zeros(5)).percent() is None


# --- the pick rule on synthetic fronts -----------------------------------------------------------------------

N = 600
FULL = (64, 64)


def _record(f1_scores: np.ndarray, macs: float) -> dict:
    return dict(f1=float(f1_scores.mean()), exact_match=float(f1_scores.mean()), macs=macs, latency_ms=None,
                per_question_f1=f1_scores.tolist())


def _synthetic_front() -> Front:
    """Four configs against full length (F1 70 on 600 questions):
    (64, 48): loses 3 answers, gains 3: no drop, tight interval, 1.2x;
    (64, 32): loses 6 answers net of nothing (a 1.4 % drop), 1.5x;
    (48, 32): a lucky config: loses 90 answers, gains 93 (point estimate better than full), but its interval is
        wide, its upper bound above 3 %, 2x;
    (32, 16): loses 60 answers (a 14 % drop), 4x."""
    full = np.zeros(N)
    full[: int(0.7 * N)] = 100.0

    def changed(lose: int, gain: int) -> np.ndarray:
        scores = full.copy()
        scores[:lose] = 0.0
        scores[int(0.7 * N): int(0.7 * N) + gain] = 100.0
        return scores

    records = [
        (FULL, _record(full, 100.0)),
        ((64, 48), _record(changed(3, 3), 100.0 / 1.2)),
        ((64, 32), _record(changed(6, 0), 100.0 / 1.5)),
        ((48, 32), _record(changed(90, 93), 50.0)),
        ((32, 16), _record(changed(60, 0), 25.0)),
    ]
    return Front.build("macs", records, FULL)


def test_pick_takes_the_fastest_config_whose_upper_bound_is_within_the_budget():
    front = _synthetic_front()
    assert front.rule["name"] == "paired-bootstrap upper bound" and front.rule["confidence"] == 0.9
    by_config = {p.length_config.values: p for p in front.points}
    lucky = by_config[(48, 32)]
    assert lucky.f1 > front.full_length.f1 and lucky.drop.percent()[2] > 3.0
    # on point estimates the lucky config would win every budget; its interval keeps it out below ~2.5 %
    assert pick(front, max_f1_drop_percent=1.0).length_config.values == (64, 48)
    assert pick(front, max_f1_drop_percent=2.5).length_config.values == (64, 32)
    assert pick(front, max_f1_drop_percent=5.0).length_config.values == (48, 32)
    assert pick(front, max_f1_drop_percent=30.0).length_config.values == (32, 16)
    assert pick(front, max_f1_drop_percent=0.0).length_config.values == FULL
    # an absolute budget is the same rule in F1 points: 1 % of F1 70 is 0.7 points
    assert pick(front, max_f1_drop=0.7).length_config.values == (64, 48)
    assert pick(front, max_f1_drop=1.75).length_config.values == (64, 32)
    choice = describe_choice(front, by_config[(64, 32)])
    assert choice["scores"] == "search" and choice["confidence"] == 0.9
    assert choice["drop_percent"][0] == pytest.approx(100 * 6 / 420)
    assert choice["drop_percent"][1] < choice["drop_percent"][0] < choice["drop_percent"][2]


def test_confirmation_candidates_keep_the_tight_configs_a_lucky_one_pushed_off_the_front():
    front = _synthetic_front()
    assert [p.length_config.values for p in front.front] == [(32, 16), (48, 32)]  # the lucky one dominates
    assert front.confirmation_candidates() == [FULL, (32, 16), (48, 32), (64, 32), (64, 48)]


def test_pick_decides_on_the_confirmation_part_when_the_front_was_confirmed():
    front = _synthetic_front()
    full = np.zeros(N)
    full[: int(0.7 * N)] = 100.0
    confirmation = {config: (float(s.mean()), float(s.mean()), s.tolist()) for config, s in {
        FULL: full,
        (64, 48): np.where(np.arange(N) < 30, 0.0, full),  # on new questions it loses 30 answers: 7 %
        (64, 32): full,  # and this one loses none
    }.items()}
    confirmed = front.with_confirmation(confirmation, {"split": "confirmation"})
    assert pick(confirmed, max_f1_drop_percent=1.0).length_config.values == (64, 32)
    # only confirmed configs are candidates: (48, 32) and (32, 16) were not re-scored
    assert pick(confirmed, min_speedup=1.1).length_config.values == (64, 32)
    with pytest.raises(ValueError, match="highest speedup is 1.500x"):
        pick(confirmed, min_speedup=1.6)
    choice = describe_choice(confirmed, pick(confirmed, max_f1_drop_percent=1.0))
    assert choice["scores"] == "confirmation" and choice["drop_points"] == [0.0, 0.0, 0.0]


def test_interval_front_round_trips_and_old_fronts_keep_the_point_estimate_rule(tmp_path):
    front = _synthetic_front().with_confirmation(
        {FULL: (70.0, 70.0, [100.0] * 7 + [0.0] * 3), (64, 48): (60.0, 60.0, [100.0] * 6 + [0.0] * 4)},
        {"split": "confirmation"},
    )
    paths = front.save(str(tmp_path))
    assert load_front(paths["json"]) == front
    saved = json.loads((tmp_path / "front.json").read_text())
    assert saved["format"] == "dtb_ext.search.front/2" and saved["space"] == "absolute"
    point = next(p for p in saved["points"] if p["length_config"] == [64, 48])
    assert set(point["drop"]) >= {"estimate", "low", "high", "confidence", "percent"}
    assert point["confirmation"]["drop"]["estimate"] == pytest.approx(10.0)
    header = (tmp_path / "front.csv").read_text().splitlines()[0]
    assert header.endswith("drop_percent,drop_high_percent,confirmation_f1,confirmation_drop_percent,"
                           "confirmation_drop_high_percent")

    # a format-1 front (written before paired scoring) is decided on point estimates, as it always was
    old = saved | {"format": "dtb_ext.search.front/1"}
    for key in ("space", "rule", "confirmed_on"):
        old.pop(key)
    old["points"] = [
        {k: v for k, v in p.items() if k not in ("space", "drop", "confirmation")} for p in saved["points"]
    ]
    old["full_length"] = {k: v for k, v in saved["full_length"].items() if k not in ("space", "drop", "confirmation")}
    legacy = Front.from_json(old)
    assert legacy.rule is None and legacy.space == "absolute"
    assert pick(legacy, max_f1_drop_percent=1.0).length_config.values == (48, 32)  # the lucky one, as before
    assert describe_choice(legacy, legacy.full_length)["rule"].startswith("point estimate")


def test_a_format_1_front_still_loads_and_picks():
    # v3's shipped front (format 1, absolute space), kept as a fixture when v4's replaced it
    front = load_front(os.path.join(TEST_DATA_DIR, "front_v3_format1.json"))
    assert front.space == "absolute" and len(front.points) >= 2
    assert pick(front, max_f1_drop_percent=1.0).length_config.values != ()


def test_the_shipped_default_front_loads_and_picks():
    from dtb_ext.search.pick import DEFAULT_FRONT_PATH

    front = load_front(DEFAULT_FRONT_PATH)
    assert front.space == "ratios" and len(front.points) >= 2
    assert pick(front, max_f1_drop_percent=3.0).speedup > 1.0
