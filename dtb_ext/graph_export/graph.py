"""A trace-friendly forward of a patched span-QA model: what `dtb_ext.export` traces into an ONNX / OpenVINO graph.

It shares every module with the patched model (embeddings, the encoder's layers, its relevance scorer, the QA
head) and computes what `DynamicEncoder` computes (docs/design.md §2), as data-independent tensor ops, so that a trace
records a graph that serves every length configuration:

- keep counts come from the attention mask and the keep-rule inputs (`keep_rule.keep_counts`), per example;
- a layer's attention always runs as SDPA (OpenVINO executes it as one fused op); tokens are then ranked by the
  model's significance source (attention received needs the probabilities, recomputed from the query and key),
  padding last, ties toward the lower position (TopK's rule, made stable in OpenVINO by
  `convert.py`), and gathers the top `max(keep)` slots, kept tokens in ascending order;
- drop-and-restore writes each dropped token's layer input at its original position in a buffer of width 2 * L0
  (slots past an example's keep count have positions in the second half, distinct columns, so that a scatter
  never has duplicate indices), and the kept tokens' outputs at the end.

The graph is cut into pieces (`prologue`, `attention`, `rank`, `gather`, `feed_forward`, `epilogue`): `forward`
chains them with `rank` at every layer (the ONNX graph: at a layer that keeps every real token it keeps them all,
in order, which gives the same values), and `openvino_graph.py` puts each layer's `rank` under an If node whose
other branch is `all_slots`, taken where no example drops a real token, so that full length skips the ranking
(TopK, sorts, the scorer, the attention probabilities).
The PyTorch path (`DynamicEncoder`) is unchanged; this module only reads the model.

Shapes: B batch, L0 input length, n tokens entering a layer (padded width), K = max keep count, D hidden size,
H heads, d head size.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dtb_ext.graph_export.keep_rule import keep_counts
from dtb_ext.models.patching import _SPAN_HEADS, dynamic_encoder
from dtb_ext.models.relevance import ATTENTION, SCORER, combine_significance
from dtb_ext.reference import softmax_with_significance

# What flows from layer to layer: hidden [B, n, D], mask [B, n] bool, positions [B, n] int64 (original position of
# each slot; L0 + k for a slot past its example's keep count), restored [B, 2 * L0, D].
State = tuple[Tensor, Tensor, Tensor, Tensor]


class LengthAdaptiveQAGraph(nn.Module):
    """(input_ids, attention_mask, token_type_ids, keep_ratio_basis_points, keep_lengths) -> (start, end) logits.

    model: a patched BertForQuestionAnswering / RobertaForQuestionAnswering (its modules are shared, not copied).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, _SPAN_HEADS):
            supported = ", ".join(head.__name__ for head in _SPAN_HEADS)
            raise ValueError(f"export supports span question-answering models ({supported}), "
                             f"got {type(model).__name__}")
        encoder = dynamic_encoder(model)
        self.embeddings = getattr(model, model.base_model_prefix).embeddings
        self.layers = encoder.layer
        self.relevance = encoder.relevance
        self.significance = encoder.significance
        self.keep_first = encoder.keep_first
        self.qa_outputs = model.qa_outputs

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor,
                keep_ratio_basis_points: Tensor, keep_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """[B, L0] int64 inputs (attention_mask nonzero for real tokens) and the [B, n_layers] int64 keep rule ->
        ([B, L0], [B, L0]) float32 start and end logits."""
        hidden, mask, positions, restored, counts, _ = self.prologue(
            input_ids, attention_mask, token_type_ids, keep_ratio_basis_points, keep_lengths)
        for index in range(self.num_layers):
            attention_output, query, key = self.attention(index, hidden, mask)
            slots, kept, leaving = self.rank(index, mask, counts[:, index], attention_output, query, key)
            attention_output, mask, positions, restored = self.gather(hidden, attention_output, slots, kept, leaving,
                                                                      positions, restored)
            hidden = self.feed_forward(index, attention_output)
        return self.epilogue(hidden, positions, restored)

    def prologue(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor,
                 keep_ratio_basis_points: Tensor, keep_lengths: Tensor) -> tuple[Tensor, ...]:
        """The embeddings and the first layer's state, the keep counts and which layers drop a real token:
        (hidden [B, L0, D], mask, positions, restored (State), counts [B, n_layers] int64, drops [n_layers] bool)."""
        mask = attention_mask != 0
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        real = mask.sum(dim=1)
        counts = keep_counts(real, keep_ratio_basis_points, keep_lengths, mask.shape[1])
        entering = torch.cat([real[:, None], counts[:, :-1]], dim=1)
        drops = (counts < entering).any(dim=0)
        batch, length = mask.shape
        positions = torch.arange(length, device=mask.device)[None, :].expand(batch, length)
        # Every original position gets written before the end (when dropped, or by the epilogue), so the buffer's
        # first contents do not matter: a copy of the embeddings costs less than zeros, which OpenVINO fills with a
        # reference Broadcast, in float32 under a bf16 hint (then converted).
        restored = torch.cat([hidden, hidden], dim=1)
        return hidden, mask, positions, restored, counts, drops

    def attention(self, index: int, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Layer `index`'s self-attention block (SDPA over the real keys): ([B, n, D] output, [B, H, n, d] query
        and key, which `select` needs for the attention significance)."""
        layer = self.layers[index]
        attention = layer.attention.self
        query, key, value = (self._heads(projection, hidden)
                             for projection in (attention.query, attention.key, attention.value))
        context = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None, None, :],
                                                             scale=attention.scaling)
        return layer.attention.output(context.transpose(1, 2).flatten(2), hidden), query, key

    def rank(self, index: int, mask: Tensor, keep: Tensor, attention_output: Tensor | None, query: Tensor | None,
             key: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Which slots to keep after layer `index`'s attention: `_kept_slots`'s (slots, kept, leaving) for keep[b]
        ([B] int64) tokens per example, ranked by the model's significance source: the relevance scorer on the
        [B, n, D] attention output and/or the attention received, from the [B, H, n, d] query and key (None for
        a source the model does not use). Computed here, so that a layer that drops nothing skips it."""
        attention_significance = None
        if self.significance != SCORER:
            scores = torch.matmul(query, key.transpose(-1, -2)) * self.layers[index].attention.self.scaling
            attention_significance = softmax_with_significance(scores, mask)[1]
        scorer_logits = None if self.significance == ATTENTION else self.relevance(index, attention_output)
        significance = combine_significance(self.significance, attention_significance, scorer_logits, mask)
        return _kept_slots(significance, mask, keep, self.keep_first)

    def gather(self, layer_input: Tensor, attention_output: Tensor, slots: Tensor, kept: Tensor, leaving: Tensor,
               positions: Tensor, restored: Tensor) -> State:
        """The kept slots' attention output [B, K, D] and the next layer's mask, positions and restored, with the
        `layer_input` ([B, n, D]) of the `leaving` slots ([B, W]) written to restored (drop-and-restore)."""
        rows = torch.arange(kept.shape[0], device=kept.device)[:, None]
        restored = _write_rows(restored, rows, _take(positions, rows, leaving), _take(layer_input, rows, leaving))
        # Slots past an example's keep count point at distinct columns of the buffer's second half.
        past_keep = restored.shape[1] // 2 + torch.arange(slots.shape[1], device=kept.device)[None, :]
        positions = torch.where(kept, _take(positions, rows, slots), past_keep)
        return _take(attention_output, rows, slots), kept, positions, restored

    def all_slots(self, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What `rank` gives where every example keeps all its real tokens, without ranking: every slot, in order
        ([B, n] int64), the mask, and no leaving slot ([B, 0]: the padding slots need no restored value)."""
        batch, width = mask.shape
        slots = torch.arange(width, device=mask.device)[None, :].expand(batch, width)
        return slots, mask, slots[:, :0]

    def feed_forward(self, index: int, hidden: Tensor) -> Tensor:
        """Layer `index`'s intermediate and output blocks: [B, K, D] -> [B, K, D]."""
        layer = self.layers[index]
        return layer.output(layer.intermediate(hidden), hidden)

    def epilogue(self, hidden: Tensor, positions: Tensor, restored: Tensor) -> tuple[Tensor, Tensor]:
        """The kept tokens' outputs restored at their positions, then the QA head: ([B, L0], [B, L0]) logits."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        sequence = _write_rows(restored, rows, positions, hidden)[:, :restored.shape[1] // 2]
        logits = self.qa_outputs(sequence)
        return logits[..., 0].float(), logits[..., 1].float()

    def _heads(self, projection: nn.Linear, hidden: Tensor) -> Tensor:
        """[B, n, D] -> [B, H, n, d]."""
        head_size = self.layers[0].attention.self.attention_head_size
        return projection(hidden).unflatten(2, (-1, head_size)).transpose(1, 2)


def _kept_slots(significance: Tensor, mask: Tensor, keep: Tensor, keep_first: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The slots each example keeps, ascending, and those whose layer input must be restored.

    Args:
        significance: [B, n] float32 scores; mask: [B, n] bool real tokens; keep: [B] int64 counts, each at most the
            example's real tokens, so padding (ranked last) is never kept.
        keep_first: slot 0 always ranks first (the model's head reads the CLS token).

    Returns:
        slots: [B, K] int64 slots into n, K = max(keep), the kept ones ascending, then the last slot (n - 1), a
            harmless duplicate that `kept` masks;
        kept: [B, K] bool, True for the first keep[b];
        leaving: [B, n - min(keep) + 1] int64, every slot ranked min(keep) or lower: each dropped slot (padding
            included) and some kept ones (at least one, so that the width is never 0, which ONNX's Reshape would
            read as "copy this dimension"), whose written layer input a later write replaces.

    The ranking is TopK's (largest first, the lower index first among equal scores, ONNX's rule).
    """
    key = significance.masked_fill(~mask, float("-inf"))
    if keep_first:
        key = torch.cat([torch.full_like(key[:, :1], float("inf")), key[:, 1:]], dim=1)
    width = key.shape[1]
    order = torch.topk(key, width, dim=1).indices
    ranked_first = order[:, :keep.max()]
    kept = torch.arange(ranked_first.shape[1], device=key.device)[None, :] < keep[:, None]
    # Sorting with the slots past keep[b] pushed to the end leaves the kept ones ascending.
    slots = torch.sort(torch.where(kept, ranked_first, torch.full_like(ranked_first, width)), dim=1).values
    return slots.clamp(max=width - 1), kept, order[:, keep.min() - 1:]


def _take(values: Tensor, rows: Tensor, slots: Tensor) -> Tensor:
    """`values` [B, n, ...] at `slots` [B, K] -> [B, K, ...]; `rows` is [B, 1] arange. One Gather on the flattened
    rows: OpenVINO runs it with its JIT kernel, where per-example indexing becomes a reference GatherND."""
    flat = (slots + rows * values.shape[1]).reshape(-1)
    trailing = values.shape[2:]
    # reshape, not flatten(0, 1): the ONNX exporter writes that as Flatten, which turns [B, n] into [B * n, 1]
    return values.reshape(-1, *trailing).index_select(0, flat).reshape(*slots.shape, *trailing)


def _write_rows(buffer: Tensor, rows: Tensor, positions: Tensor, values: Tensor) -> Tensor:
    """A copy of `buffer` [B, W, D] with `values[b, k]` ([B, K, D]) written at `positions[b, k]` ([B, K], distinct
    within a row); `rows` is [B, 1] arange. An indexed assignment on a copy: it exports as ScatterND to ONNX and
    to OpenVINO, where the functional `index_put` has no OpenVINO conversion."""
    written = buffer.clone()
    written[rows, positions] = values
    return written
