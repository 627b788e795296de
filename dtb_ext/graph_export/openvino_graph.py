"""The OpenVINO graph of a patched span-QA model, with each layer's token ranking under an If node.

`graph.LengthAdaptiveQAGraph` traced whole ranks its tokens at every layer, even where every example keeps all
its real tokens (ratios of 1, short examples under an absolute length): at full length that costs TopK and sorts
at every layer (and, for the attention significance, the attention probabilities that SDPA never materialises).
Here the module's pieces are converted one by one (`openvino.convert_model`) and joined into one model in which
layer i runs

    attention (SDPA) -> If(drops[i]) { rank } else { all slots } -> gather, restore -> FFN

with `drops[i]` (from the prologue) true where some example of the batch drops a real token at layer i. Only
small tensors cross the If (the significance sources in; slots, mask and the slots to restore out): OpenVINO's
CPU plugin copies an If's inputs and outputs. At full length no slot is restored, so the restore scatter writes
nothing. The graph still takes the keep rule as an input and serves every configuration.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dtb_ext.graph_export.graph import LengthAdaptiveQAGraph
from dtb_ext.models.relevance import ATTENTION, SCORER


class _Piece(nn.Module):
    """`graph.<method>(*leading, *inputs)` as a module to convert. The model is held as `qa_graph`: OpenVINO
    converts a TorchScript module, whose `graph` attribute is its TorchScript graph."""

    def __init__(self, graph: LengthAdaptiveQAGraph, method: str, *leading: Any) -> None:
        super().__init__()
        self.qa_graph, self.method, self.leading = graph, method, leading

    def forward(self, *inputs: Tensor) -> Any:
        return getattr(self.qa_graph, self.method)(*self.leading, *inputs)


class _Rank(nn.Module):
    """`graph.rank` of layer `index` on the significance sources the model uses (`_sources`) and (mask, keep) ->
    (slots, kept, leaving)."""

    def __init__(self, graph: LengthAdaptiveQAGraph, index: int) -> None:
        super().__init__()
        self.qa_graph, self.index = graph, index

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        *sources, mask, keep = inputs
        return self.qa_graph.rank(self.index, mask, keep, *_sources(self.qa_graph, sources))


def _sources(graph: LengthAdaptiveQAGraph, sources: Any) -> tuple[Any, Any, Any]:
    """(attention_output, query, key) for `graph.rank` from the sources the model's significance uses, in that
    order, None for the others: the scorer reads the attention output, the attention significance query and key."""
    sources = list(sources)
    attention_output = sources.pop(0) if graph.significance != ATTENTION else None
    query, key = (sources.pop(0), sources.pop(0)) if graph.significance != SCORER else (None, None)
    return attention_output, query, key


def convert_with_skipped_ranking(graph: LengthAdaptiveQAGraph, example: tuple[Tensor, ...]) -> Any:
    """The OpenVINO model of `graph` (inputs and outputs unnamed: `convert.name_openvino_ports` names them).

    example: the graph's example inputs (a padded batch that drops tokens at every layer), run through the
    pieces in PyTorch to give each piece its example inputs.
    """
    import openvino as ov
    import openvino.opset8 as opset

    def convert(module: nn.Module, inputs: tuple[Tensor, ...], name: str) -> Any:
        shapes = [ov.PartialShape.dynamic(tensor.dim()) for tensor in inputs]
        types = [ov.Type.boolean if tensor.dtype == torch.bool else ov.Type.i64 if tensor.dtype == torch.int64
                 else ov.Type.f32 for tensor in inputs]
        converted = ov.convert_model(module, example_input=inputs, input=list(zip(shapes, types)))
        make_top_k_stable(converted)
        # Each piece's op names restart from the same ones (NNCF needs them unique in the joined model).
        for node in converted.get_ordered_ops():
            node.set_friendly_name(f"{name}/{node.get_friendly_name()}")
        _name_tensors(converted)
        return converted

    def run(module: nn.Module, torch_inputs: tuple[Tensor, ...], inputs: list[Any], name: str) -> tuple[tuple, list]:
        """The piece on the example (PyTorch outputs) and inlined into the joined model (its outputs there)."""
        torch_outputs = module(*torch_inputs)
        torch_outputs = torch_outputs if isinstance(torch_outputs, tuple) else (torch_outputs,)
        return torch_outputs, _inline(convert(module, torch_inputs, name), inputs)

    def scalar_index(values: Any, index: int, axis: int) -> Any:
        return opset.gather(values, opset.constant(index, ov.Type.i64), opset.constant(axis, ov.Type.i64)).output(0)

    prologue = convert(_Piece(graph, "prologue"), example, "prologue")
    parameters = list(prologue.get_parameters())
    hidden, mask, positions, restored, counts, drops = _outputs(prologue)
    with torch.no_grad():
        torch_hidden, torch_mask, torch_positions, torch_restored, torch_counts, _ = graph.prologue(*example)
        for index in range(graph.num_layers):
            layer = f"layer{index}"
            (torch_attention, torch_query, torch_key), (attention_output, query, key) = run(
                _Piece(graph, "attention", index), (torch_hidden, torch_mask), [hidden, mask], f"{layer}.attention")
            used = [graph.significance != ATTENTION, graph.significance != SCORER, graph.significance != SCORER]
            torch_sources = [value for value, use in zip((torch_attention, torch_query, torch_key), used) if use]
            sources = [value for value, use in zip((attention_output, query, key), used) if use]
            torch_keep, keep = torch_counts[:, index], scalar_index(counts, index, 1)
            rank_inputs = (*torch_sources, torch_mask, torch_keep)
            torch_slots, torch_kept, torch_leaving = _Rank(graph, index)(*rank_inputs)
            slots, kept, leaving = _if(scalar_index(drops, index, 0), [*sources, mask, keep],
                                       convert(_Rank(graph, index), rank_inputs, f"{layer}.rank"),
                                       convert(_Piece(graph, "all_slots"), (torch_mask,), f"{layer}.all_slots"),
                                       else_inputs=[len(sources)])
            (torch_selected, torch_mask, torch_positions, torch_restored), (selected, mask, positions, restored) = run(
                _Piece(graph, "gather"), (torch_hidden, torch_attention, torch_slots, torch_kept, torch_leaving,
                                          torch_positions, torch_restored),
                [hidden, attention_output, slots, kept, leaving, positions, restored], f"{layer}.gather")
            (torch_hidden,), (hidden,) = run(_Piece(graph, "feed_forward", index), (torch_selected,), [selected],
                                             f"{layer}.feed_forward")
        epilogue = convert(_Piece(graph, "epilogue"), (torch_hidden, torch_positions, torch_restored), "epilogue")
    outputs = _inline(epilogue, [hidden, positions, restored])
    joined = ov.Model([opset.result(output) for output in outputs], parameters, "length_adaptive_qa")
    _name_tensors(joined)
    return joined


def make_top_k_stable(model: Any) -> int:
    """Replace every unstable TopK of an OpenVINO model by a stable one (equal values keep their input order, so
    the lower position wins a tie: docs/design.md §2.3); returns how many were replaced."""
    import openvino.opset11 as opset

    replaced = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "TopK":
            continue
        attributes = node.get_attributes()
        if attributes.get("stable", False):
            continue
        stable = opset.topk(node.input_value(0), node.input_value(1), attributes["axis"], attributes["mode"],
                            attributes["sort"], attributes["index_element_type"], stable=True)
        for index in range(2):
            node.output(index).replace(stable.output(index))
        replaced += 1
    model.validate_nodes_and_infer_types()
    return replaced


def _name_tensors(model: Any) -> None:
    """Name every unnamed output tensor of `model`'s ops after its op: NNCF reads the names of an If node's inputs."""
    for node in model.get_ordered_ops():
        for index, output in enumerate(node.outputs()):
            if not output.get_names():
                output.get_tensor().set_names({f"{node.get_friendly_name()}:{index}"})


def _outputs(model: Any) -> list[Any]:
    return [result.input_value(0) for result in model.get_results()]


def _inline(model: Any, inputs: list[Any]) -> list[Any]:
    """The outputs of `model`'s ops rewired to read `inputs` (values of the model being built) instead of its own
    parameters, in order."""
    for parameter, value in zip(model.get_parameters(), inputs):
        parameter.output(0).replace(value)
    return _outputs(model)


def _if(condition: Any, inputs: list[Any], then_body: Any, else_body: Any, else_inputs: list[int]) -> list[Any]:
    """If(condition) { then_body(inputs) } else { else_body(inputs[i] for i in else_inputs) }: the If node's
    outputs, one per result of the bodies (which must agree in number and types)."""
    import openvino.opset8 as opset

    # The Output overload: given a Node that is not a Parameter, OpenVINO 2026.4's binding builds an If without
    # its condition input.
    node = opset.if_op(condition)
    node.set_then_body(then_body)
    node.set_else_body(else_body)
    then_parameters, else_parameters = then_body.get_parameters(), else_body.get_parameters()
    for position, value in enumerate(inputs):
        else_parameter = else_parameters[else_inputs.index(position)] if position in else_inputs else None
        node.set_input(value, then_parameters[position], else_parameter)
    return [node.set_output(then_result, else_result)
            for then_result, else_result in zip(then_body.get_results(), else_body.get_results())]
