"""INT8 inference for a (patched or plain) BERT-family model: int8 Linear weights, activations quantized per call.

The Linear layers are replaced by torch's dynamic int8 Linear with per-output-channel weight scales; the rest of
the model (embeddings, LayerNorm, softmax, the dynamic encoder's token selection) stays in float32, so a patched
model keeps dropping tokens.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of the float32 `model` whose nn.Linear layers are dynamic int8 with per-channel weight scales.

    The copy shares nothing with `model`, which is left unchanged.
    """
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError(f"quantize_int8 expects a float32 model; got {next(model.parameters()).dtype}")
    quantized = copy.deepcopy(model).eval()
    return quantize_dynamic(quantized, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
