"""Export a patched (length-adaptive) span-QA model to OpenVINO or ONNX as one graph that serves every length
configuration (DESIGN.md §2.9): `export` writes it (also `dtb_ext.export`), `ExportedQA` runs it,
`evaluate_exported` scores it on SQuAD.

The package is not named `export` because `dtb_ext.export` is the function: a subpackage of that name would
replace it as an attribute of `dtb_ext` once imported."""
from dtb_ext.graph_export.convert import EXPORT_PRECISIONS, FORMATS, export
from dtb_ext.graph_export.evaluate import evaluate_exported
from dtb_ext.graph_export.runtime import ExportedQA

__all__ = ["EXPORT_PRECISIONS", "FORMATS", "ExportedQA", "evaluate_exported", "export"]
