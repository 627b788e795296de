"""Export a patched (length-adaptive) span-QA model to OpenVINO or ONNX as one graph that serves every length
configuration (docs/design.md §2.9): `export` writes it (also `dtb_ext.export`), `ExportedQA` runs it,
`evaluate_exported` scores it on SQuAD.

The package is not named `export` because `dtb_ext.export` is the function: a subpackage of that name would
replace it as an attribute of `dtb_ext` once imported. Names are imported on first use, so that `dtb --help`
(which reads this package's command line) does not load torch."""
from __future__ import annotations

from dtb_ext._lazy import lazy_exports

_EXPORTS = {
    "EXPORT_PRECISIONS": "dtb_ext.graph_export.convert",
    "FORMATS": "dtb_ext.graph_export.convert",
    "export": "dtb_ext.graph_export.convert",
    "ExportedQA": "dtb_ext.graph_export.runtime",
    "evaluate_exported": "dtb_ext.graph_export.evaluate",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
