"""The search result: every evaluated configuration, its Pareto front and the full-length reference, saved as
JSON (the file `pick` reads), CSV and a PNG plot.

Format 2 adds, per point, the paired drop interval against full length on the search part (`drop`) and the
scores on the confirmation part (`confirmation`), and, per front, the space, the pick rule and the confirmation
part's description. Format 1 fronts (no per-question scores) still load; `pick` then falls back on point
estimates and says so.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

from dtb_ext.config import RATIO, LengthConfig
from dtb_ext.jsonfile import read_json_file
from dtb_ext.search.evaluation import COST_MODELS
from dtb_ext.search.paired import BootstrapSettings, DropInterval, paired_drop_interval
from dtb_ext.search.pareto import pareto_indices
from dtb_ext.search.space import SPACE_KINDS, Config

FRONT_FORMAT = "dtb_ext.search.front/2"
READABLE_FORMATS = ("dtb_ext.search.front/1", FRONT_FORMAT)
PAIRED_RULE = "paired-bootstrap upper bound"
CSV_COLUMNS = ("length_config", "f1", "exact_match", "macs", "latency_ms", "speedup", "dev_f1", "dev_exact_match")
# written only by fronts that have per-question scores
CSV_INTERVAL_COLUMNS = ("drop_percent", "drop_high_percent", "confirmation_f1", "confirmation_drop_percent",
                        "confirmation_drop_high_percent")


@dataclass(frozen=True)
class PartScores:
    """A config's scores on the confirmation part: F1/EM, and its paired drop interval against full length on
    that part (None for fronts without per-question scores)."""

    f1: float
    exact_match: float
    drop: DropInterval | None = None

    def to_json(self) -> dict[str, Any]:
        return {"f1": self.f1, "exact_match": self.exact_match,
                "drop": None if self.drop is None else self.drop.to_json()}

    @staticmethod
    def from_json(record: dict[str, Any] | None) -> "PartScores | None":
        if record is None:
            return None
        return PartScores(float(record["f1"]), float(record["exact_match"]), DropInterval.from_json(record.get("drop")))


def _length_config(values: Sequence[Any], space: str) -> LengthConfig:
    """A searched config (a tuple of the space's values) as the LengthConfig of its space."""
    if space == "ratios":
        return LengthConfig.ratios([float(v) for v in values])
    return LengthConfig.absolute([int(v) for v in values])


@dataclass(frozen=True)
class Point:
    """One evaluated configuration. f1/exact_match are on the search part; `drop` is the paired interval of its
    F1 drop below full length on the same questions; `confirmation` its scores on the confirmation part; dev_*
    on the optional re-evaluation set. speedup = cost(full length) / cost(this config) under the search's cost
    model. length_config is the config as a `LengthConfig` (absolute token counts or ratios, whichever space
    the front was searched in), which `set_length_config`, `length_config`, `evaluate_qa` and
    `save_config_to_model` take as it is."""

    length_config: LengthConfig
    f1: float
    exact_match: float
    macs: float | None
    latency_ms: float | None
    speedup: float
    dev_f1: float | None = None
    dev_exact_match: float | None = None
    drop: DropInterval | None = None
    confirmation: PartScores | None = None

    @property
    def space(self) -> str:
        """The search space the config comes from: "ratios" or "absolute"."""
        return "ratios" if self.length_config.kind == RATIO else "absolute"

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["length_config"] = list(self.length_config.values)
        record["space"] = self.space
        record["drop"] = None if self.drop is None else self.drop.to_json()
        record["confirmation"] = None if self.confirmation is None else self.confirmation.to_json()
        return record

    @staticmethod
    def from_json(record: dict[str, Any]) -> "Point":
        space = record.get("space", "absolute")
        if space not in SPACE_KINDS:
            raise ValueError(f"a front point's space must be one of {SPACE_KINDS}, got {space!r}")
        fields = {name: value for name, value in record.items() if name != "space"}
        return Point(**{
            **fields,
            "length_config": _length_config(record["length_config"], space),
            "drop": DropInterval.from_json(record.get("drop")),
            "confirmation": PartScores.from_json(record.get("confirmation")),
        })


@dataclass(frozen=True)
class Front:
    """points: every distinct evaluated config; front: the non-dominated ones (search-part F1 up, cost down) by
    increasing cost; full_length: the reference point (every layer keeps every token), which need not be on the
    front. space: "absolute" or "ratios". rule: how `pick` decides (the paired-bootstrap settings), None for
    fronts without per-question scores. confirmed_on: the confirmation part, when the front was re-scored on it;
    reevaluated_on: the optional report set (dev)."""

    cost_model: str
    points: tuple[Point, ...]
    front: tuple[Point, ...]
    full_length: Point
    identity: dict[str, Any] = field(default_factory=dict)
    reevaluated_on: dict[str, Any] | None = None
    space: str = "absolute"
    rule: dict[str, Any] | None = None
    confirmed_on: dict[str, Any] | None = None

    @staticmethod
    def build(
        cost_model: str,
        results: Sequence[tuple[Config, dict[str, Any]]],
        full_config: Config,
        identity: dict[str, Any] | None = None,
        space: str = "absolute",
        bootstrap: BootstrapSettings | None = None,
    ) -> "Front":
        """Make a front from (config, record) pairs; a record has f1, exact_match, macs, latency_ms and, for
        paired intervals, per_question_f1 ([n] F1 points, the same questions in the same order for every
        config). Intervals are computed when the full-length record has per-question scores."""
        if cost_model not in COST_MODELS:
            raise ValueError(f"cost model must be one of {COST_MODELS}, got {cost_model!r}")
        if space not in SPACE_KINDS:
            raise ValueError(f"space must be one of {SPACE_KINDS}, got {space!r}")
        bootstrap = bootstrap or BootstrapSettings()
        cost_key = "macs" if cost_model == "macs" else "latency_ms"
        by_config: dict[Config, dict[str, Any]] = {}
        for config, record in results:
            by_config.setdefault(tuple(config), record)
        if full_config not in by_config:
            raise ValueError(f"the full-length config {full_config} has not been evaluated, so speedups are undefined")
        full_cost = float(by_config[full_config][cost_key])
        reference = by_config[full_config].get("per_question_f1")

        def drop(record: dict[str, Any]) -> DropInterval | None:
            scores = record.get("per_question_f1")
            return None if reference is None or scores is None else paired_drop_interval(reference, scores, bootstrap)

        points = tuple(
            Point(
                length_config=_length_config(config, space),
                f1=float(record["f1"]),
                exact_match=float(record["exact_match"]),
                macs=None if record.get("macs") is None else float(record["macs"]),
                latency_ms=None if record.get("latency_ms") is None else float(record["latency_ms"]),
                speedup=full_cost / float(record[cost_key]),
                drop=drop(record),
            )
            for config, record in by_config.items()
        )
        rule = None if reference is None else {"name": PAIRED_RULE, **bootstrap.to_json()}
        return Front._from_points(cost_model, points, full_config, identity or {}, None, space, rule, None)

    @staticmethod
    def _from_points(cost_model, points, full_config, identity, reevaluated_on, space, rule, confirmed_on) -> "Front":
        on_front = pareto_indices([p.f1 for p in points], [1.0 / p.speedup for p in points])
        full = next(p for p in points if p.length_config.values == tuple(full_config))
        return Front(cost_model, tuple(points), tuple(points[i] for i in on_front), full, identity, reevaluated_on,
                     space, rule, confirmed_on)

    def confirmation_candidates(self) -> list[Config]:
        """Configs worth confirming: full length, the front, and (with per-question scores) the front of the
        drop's upper bound against speedup. The second front keeps the configs with tight intervals that a
        lucky, noisy config pushed off the first one, and those are the ones a bounded pick can take."""
        chosen = [self.full_length] + list(self.front)
        if self.rule is not None:
            bounded = [p for p in self.points if p.drop is not None]
            on_bound_front = pareto_indices([-p.drop.high for p in bounded], [1.0 / p.speedup for p in bounded])
            chosen += [bounded[i] for i in on_bound_front]
        return list(dict.fromkeys(p.length_config.values for p in chosen))

    def _with_points(self, update, **fields: Any) -> "Front":
        points = tuple(update(p) for p in self.points)
        merged = {"reevaluated_on": self.reevaluated_on, "confirmed_on": self.confirmed_on, **fields}
        return Front._from_points(self.cost_model, points, self.full_length.length_config.values, self.identity,
                                  merged["reevaluated_on"], self.space, self.rule, merged["confirmed_on"])

    def with_dev_scores(self, scores: dict[Config, tuple[float, float]], description: dict[str, Any]) -> "Front":
        """A copy whose points carry (dev_f1, dev_exact_match) from `scores`, keyed by config."""
        def update(point: Point) -> Point:
            if point.length_config.values not in scores:
                return point
            dev_f1, dev_em = scores[point.length_config.values]
            return replace(point, dev_f1=dev_f1, dev_exact_match=dev_em)

        return self._with_points(update, reevaluated_on=description)

    def with_confirmation(
        self,
        scores: dict[Config, tuple[float, float, Sequence[float] | None]],
        description: dict[str, Any],
    ) -> "Front":
        """A copy whose points carry their confirmation-part scores from `scores` (config -> (f1, exact_match,
        per-question F1 or None)); drop intervals are computed against the full-length config's per-question
        scores, which `scores` must hold, with this front's bootstrap settings."""
        full_config = self.full_length.length_config.values
        if full_config not in scores:
            raise ValueError(f"confirmation scores need the full-length config {full_config}, the reference")
        reference = scores[full_config][2]
        settings = BootstrapSettings.from_json(self.rule) if self.rule is not None else BootstrapSettings()

        def update(point: Point) -> Point:
            if point.length_config.values not in scores:
                return point
            f1, exact_match, per_question = scores[point.length_config.values]
            drop = None
            if reference is not None and per_question is not None:
                drop = paired_drop_interval(reference, per_question, settings)
            return replace(point, confirmation=PartScores(float(f1), float(exact_match), drop))

        return self._with_points(update, confirmed_on=description)

    # --- files ------------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FRONT_FORMAT,
            "cost_model": self.cost_model,
            "space": self.space,
            "rule": self.rule,
            "identity": self.identity,
            "confirmed_on": self.confirmed_on,
            "reevaluated_on": self.reevaluated_on,
            "full_length": self.full_length.to_json(),
            "front": [p.to_json() for p in self.front],
            "points": [p.to_json() for p in self.points],
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> "Front":
        if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a dtb_ext search front: expected format {FRONT_FORMAT!r}, found {found!r}")
        space = data.get("space", "absolute")
        points = tuple(Point.from_json(r) for r in data["points"])
        full = _length_config(data["full_length"]["length_config"], space).values
        return Front._from_points(
            data["cost_model"], points, full, data.get("identity") or {}, data.get("reevaluated_on"), space,
            data.get("rule"), data.get("confirmed_on"),
        )

    def save(self, out_dir: str, stem: str = "front") -> dict[str, str]:
        """Write <stem>.json, <stem>.csv (front points only) and <stem>.png into out_dir; return their paths."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {ext: os.path.join(out_dir, f"{stem}.{ext}") for ext in ("json", "csv", "png")}
        _write_atomically(paths["json"], json.dumps(self.to_json(), indent=2) + "\n")
        with_intervals = self.rule is not None
        with open(paths["csv"] + ".tmp", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS + (CSV_INTERVAL_COLUMNS if with_intervals else ()))
            for point in self.front:
                record = point.to_json()
                record["length_config"] = " ".join(str(v) for v in point.length_config.values)
                row = ["" if record[c] is None else record[c] for c in CSV_COLUMNS]
                if with_intervals:
                    row += [_csv_number(v) for v in _interval_cells(point)]
                writer.writerow(row)
        os.replace(paths["csv"] + ".tmp", paths["csv"])
        self.plot(paths["png"])
        return paths

    def plot(self, path: str) -> None:
        """F1 vs speedup: every evaluated point grey, the front highlighted, the full-length point starred."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.4, 4.8))
        axes = figure.subplots()
        axes.scatter([p.speedup for p in self.points], [p.f1 for p in self.points], s=14, c="0.7",
                     label=f"evaluated ({len(self.points)})")
        front = sorted(self.front, key=lambda p: p.speedup)
        axes.plot([p.speedup for p in front], [p.f1 for p in front], "o-", c="tab:blue", ms=5,
                  label=f"Pareto front ({len(front)})")
        axes.scatter([self.full_length.speedup], [self.full_length.f1], marker="*", s=160, c="tab:red", zorder=3,
                     label="full length")
        confirmed = [p for p in front if p.confirmation is not None]
        if confirmed:
            axes.plot([p.speedup for p in confirmed], [p.confirmation.f1 for p in confirmed], "^:", c="tab:green",
                      ms=4, label="front on the confirmation part")
        rescored = [p for p in front if p.dev_f1 is not None]
        if rescored:
            name = (self.reevaluated_on or {}).get("data_file", "re-evaluation set")
            axes.plot([p.speedup for p in rescored], [p.dev_f1 for p in rescored], "s--", c="tab:orange", ms=4,
                      mfc="none", label=f"front on {name}")
        axes.set_xlabel(f"speedup vs full length ({'MACs' if self.cost_model == 'macs' else 'measured latency'})")
        axes.set_ylabel("F1 (search part; others where marked)")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower left")
        figure.tight_layout()
        figure.savefig(path, dpi=120)


def _interval_cells(point: Point) -> list[float | None]:
    """drop %, its upper bound %, confirmation F1, its drop % and upper bound % (None where unknown)."""
    def estimate_and_high(drop: DropInterval | None) -> list[float | None]:
        percent = None if drop is None else drop.percent()
        return [None, None] if percent is None else [percent[0], percent[2]]

    confirmation = point.confirmation
    return (estimate_and_high(point.drop) + [None if confirmation is None else confirmation.f1]
            + estimate_and_high(None if confirmation is None else confirmation.drop))


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def load_front(path: str) -> Front:
    """Read a front JSON written by `Front.save` (ValueError when the file is missing or not a front)."""
    return Front.from_json(read_json_file(path, "front file", "a front written by `dtb search`"))


def _write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)
