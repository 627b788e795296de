"""The search result: every evaluated configuration, its Pareto front and the full-length reference, saved as
JSON (the file `pick` reads), CSV and a PNG plot."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

from dtb_ext.jsonfile import read_json_file
from dtb_ext.search.evaluation import COST_MODELS
from dtb_ext.search.pareto import pareto_indices
from dtb_ext.search.space import Config

FRONT_FORMAT = "dtb_ext.search.front/1"
CSV_COLUMNS = ("length_config", "f1", "exact_match", "macs", "latency_ms", "speedup", "dev_f1", "dev_exact_match")


@dataclass(frozen=True)
class Point:
    """One evaluated configuration. f1/exact_match are on the search split; dev_* on the re-evaluation set (when
    the front was re-evaluated). speedup = cost(full length) / cost(this config) under the search's cost model."""

    length_config: Config
    f1: float
    exact_match: float
    macs: float | None
    latency_ms: float | None
    speedup: float
    dev_f1: float | None = None
    dev_exact_match: float | None = None

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["length_config"] = list(self.length_config)
        return record

    @staticmethod
    def from_json(record: dict[str, Any]) -> "Point":
        return Point(**{**record, "length_config": tuple(int(v) for v in record["length_config"])})


@dataclass(frozen=True)
class Front:
    """points: every distinct evaluated config; front: the non-dominated ones by increasing cost; full_length:
    the reference point (every layer keeps every token), which need not be on the front."""

    cost_model: str
    points: tuple[Point, ...]
    front: tuple[Point, ...]
    full_length: Point
    identity: dict[str, Any] = field(default_factory=dict)
    reevaluated_on: dict[str, Any] | None = None

    @staticmethod
    def build(
        cost_model: str,
        results: Sequence[tuple[Config, dict[str, Any]]],
        full_config: Config,
        identity: dict[str, Any] | None = None,
    ) -> "Front":
        """Make a front from (config, record) pairs; a record has f1, exact_match, macs, latency_ms."""
        if cost_model not in COST_MODELS:
            raise ValueError(f"cost model must be one of {COST_MODELS}, got {cost_model!r}")
        cost_key = "macs" if cost_model == "macs" else "latency_ms"
        by_config: dict[Config, dict[str, Any]] = {}
        for config, record in results:
            by_config.setdefault(tuple(config), record)
        if full_config not in by_config:
            raise ValueError(f"the full-length config {full_config} has not been evaluated, so speedups are undefined")
        full_cost = float(by_config[full_config][cost_key])
        points = tuple(
            Point(
                length_config=config,
                f1=float(record["f1"]),
                exact_match=float(record["exact_match"]),
                macs=None if record.get("macs") is None else float(record["macs"]),
                latency_ms=None if record.get("latency_ms") is None else float(record["latency_ms"]),
                speedup=full_cost / float(record[cost_key]),
            )
            for config, record in by_config.items()
        )
        return Front._from_points(cost_model, points, full_config, identity or {}, None)

    @staticmethod
    def _from_points(cost_model, points, full_config, identity, reevaluated_on) -> "Front":
        on_front = pareto_indices([p.f1 for p in points], [1.0 / p.speedup for p in points])
        full = next(p for p in points if p.length_config == full_config)
        return Front(cost_model, tuple(points), tuple(points[i] for i in on_front), full, identity, reevaluated_on)

    def with_dev_scores(self, scores: dict[Config, tuple[float, float]], description: dict[str, Any]) -> "Front":
        """A copy whose points carry (dev_f1, dev_exact_match) from `scores`, keyed by config."""
        def update(point: Point) -> Point:
            if point.length_config not in scores:
                return point
            dev_f1, dev_em = scores[point.length_config]
            return replace(point, dev_f1=dev_f1, dev_exact_match=dev_em)

        points = tuple(update(p) for p in self.points)
        return Front._from_points(self.cost_model, points, self.full_length.length_config, self.identity, description)

    # --- files ------------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FRONT_FORMAT,
            "cost_model": self.cost_model,
            "identity": self.identity,
            "reevaluated_on": self.reevaluated_on,
            "full_length": self.full_length.to_json(),
            "front": [p.to_json() for p in self.front],
            "points": [p.to_json() for p in self.points],
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> "Front":
        if not isinstance(data, dict) or data.get("format") != FRONT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a dtb_ext search front: expected format {FRONT_FORMAT!r}, found {found!r}")
        points = tuple(Point.from_json(r) for r in data["points"])
        full = tuple(int(v) for v in data["full_length"]["length_config"])
        return Front._from_points(
            data["cost_model"], points, full, data.get("identity") or {}, data.get("reevaluated_on")
        )

    def save(self, out_dir: str, stem: str = "front") -> dict[str, str]:
        """Write <stem>.json, <stem>.csv (front points only) and <stem>.png into out_dir; return their paths."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {ext: os.path.join(out_dir, f"{stem}.{ext}") for ext in ("json", "csv", "png")}
        _write_atomically(paths["json"], json.dumps(self.to_json(), indent=2) + "\n")
        with open(paths["csv"] + ".tmp", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for point in self.front:
                record = point.to_json()
                record["length_config"] = " ".join(str(v) for v in point.length_config)
                writer.writerow(["" if record[c] is None else record[c] for c in CSV_COLUMNS])
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
        rescored = [p for p in front if p.dev_f1 is not None]
        if rescored:
            name = (self.reevaluated_on or {}).get("data_file", "re-evaluation set")
            axes.plot([p.speedup for p in rescored], [p.dev_f1 for p in rescored], "s--", c="tab:orange", ms=4,
                      mfc="none", label=f"front on {name}")
        axes.set_xlabel(f"speedup vs full length ({'MACs' if self.cost_model == 'macs' else 'measured latency'})")
        axes.set_ylabel("F1 (search split; dev where marked)")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower left")
        figure.tight_layout()
        figure.savefig(path, dpi=120)


def load_front(path: str) -> Front:
    """Read a front JSON written by `Front.save` (ValueError when the file is missing or not a front)."""
    return Front.from_json(read_json_file(path, "front file", "a front written by `dtb search`"))


def _write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)
