"""A deliberately simple, one-example-at-a-time version of the dynamic encoder: the oracle for the batched one.

No padding, no batching, no dtb ops: plain softmax, `torch.topk`, sorted positions, and index writes for
drop-and-restore. It calls the same Hugging Face submodules as `DynamicEncoder`, so it checks the selection,
gathering and restoring logic, while the full-length comparison with Hugging Face checks the layer arithmetic.
Ties in significance are assumed absent (`torch.topk` does not promise the lower position wins).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def reference_encode(layers: nn.ModuleList, embeddings: Tensor, keep_counts: list[int], keep_first: bool) -> Tensor:
    """Run one example through the layers, keeping `keep_counts[i]` tokens at layer i.

    Args:
        layers: a BERT-family encoder's `layer` ModuleList (in eval mode: no dropout here).
        embeddings: [n, D] the example's real tokens only.
        keep_counts: one count per layer, non-increasing, each <= n.
        keep_first: position 0 is always kept.

    Returns:
        [n, D]: each token's output from the last layer that processed it fully.
    """
    final = embeddings.clone()
    hidden = embeddings
    positions = torch.arange(embeddings.shape[0])
    for layer, keep in zip(layers, keep_counts):
        attention_output, significance = _attention(layer, hidden)
        if keep < hidden.shape[0]:
            score = significance.clone()
            if keep_first:
                score[positions == 0] = float("inf")
            chosen = torch.topk(score, keep).indices.sort().values
            final[positions] = hidden  # dropped tokens keep this layer's input
            attention_output = attention_output[chosen]
            positions = positions[chosen]
        hidden = layer.output(layer.intermediate(attention_output), attention_output)
    final[positions] = hidden
    return final


def _attention(layer: nn.Module, hidden: Tensor) -> tuple[Tensor, Tensor]:
    """[n, D] -> ([n, D] attention block output, [n] attention received, summed over heads and queries)."""
    attention = layer.attention.self
    heads = attention.num_attention_heads

    def split(projection: nn.Linear) -> Tensor:
        return projection(hidden).view(hidden.shape[0], heads, -1).transpose(0, 1)  # [H, n, d]

    query, key, value = split(attention.query), split(attention.key), split(attention.value)
    probs = torch.softmax(query @ key.transpose(1, 2) * attention.scaling, dim=-1)  # [H, n, n]
    context = (probs @ value).transpose(0, 1).reshape(hidden.shape)
    return layer.attention.output(context[None], hidden[None])[0], probs.sum(dim=(0, 1))
