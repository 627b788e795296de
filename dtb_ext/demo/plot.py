"""The demo's plot: F1 against speedup, the shipped front beside the measured points."""
from __future__ import annotations

from typing import Any, Sequence

from dtb_ext.demo.report import DemoRow

# one colour per runtime and precision (at most 5: torch and OpenVINO in two precisions, ONNX Runtime in fp32)
VARIANT_COLOURS = ("tab:red", "tab:purple", "tab:green", "tab:brown", "tab:olive")


def plot_demo(front: Any, rows: Sequence[DemoRow], path: str, settings: dict[str, Any]) -> None:
    """F1 vs speedup: the shipped front (search-split F1 vs MACs speedup, plus its dev F1 when re-evaluated)
    and the demo's measured points (dev-sample F1 vs measured speedup under both padding protocols: one colour per
    runtime and precision, one marker per protocol)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.2, 5.0))
    axes = figure.subplots()
    axes.scatter([p.speedup for p in front.points], [p.f1 for p in front.points], s=12, c="0.75",
                 label="searched configs (search split, MACs speedup)")
    shipped = sorted(front.front, key=lambda p: p.speedup)
    axes.plot([p.speedup for p in shipped], [p.f1 for p in shipped], "o-", c="tab:blue", ms=4,
              label="shipped front (search split, MACs speedup)")
    rescored = [p for p in shipped if p.dev_f1 is not None]
    if rescored:
        axes.plot([p.speedup for p in rescored], [p.dev_f1 for p in rescored], "s--", c="tab:cyan", ms=4,
                  mfc="none", label="shipped front (dev F1, MACs speedup)")
    sample = f"{settings['questions']} dev questions"
    paddings = (("dynamic", "D", "dynamic padding"), ("max_length", "^", f"padded to {settings['max_seq_length']}"))
    for colour, variant in zip(VARIANT_COLOURS, settings["variants"]):
        measured = [row.measurements[variant] for row in rows]
        for padding, marker, name in paddings:
            axes.scatter([m.speedup[padding] for m in measured], [m.f1 for m in measured], marker=marker, s=60,
                         c=colour, zorder=3, label=f"measured {variant}: {sample}, B=1, {name}")
    for row in rows:
        axes.annotate(row.config.label, (row.reference.speedup["dynamic"], row.reference.f1),
                      textcoords="offset points", xytext=(6, 4), fontsize=7)
    axes.set_xlabel(f"speedup vs {settings['reference']} full length")
    axes.set_ylabel("F1")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


