"""One encoder layer: Hugging Face `BertLayer` (eager, sdpa) against the dynamic encoder's layer, on identical
inputs and weights (pytest-benchmark; reported, not pass/fail).

The dynamic layer is `DynamicEncoder.encode` over a one-layer stack: attention on every token with the fused
softmax + significance, select-and-gather of the kept tokens, the feed-forward block on them alone, and the
restore to full length that a model pays once at its end. `patched-full` keeps every token (no significance, the
SDPA path). `reference-keep-0.5` runs the same dynamic layer on the pure-PyTorch reference ops
(`dtb_ext.ops.reference_ops`): the baseline the kernels replace. B in {1, 8}, L = 384 (every token real, the
paper's padded protocol at its longest), MiniLM-L6 and BERT-base layer sizes, random weights.
`extra_info["macs_ratio"]` is the ideal speedup over full length.
Run: `.venv/bin/python -m pytest bench/test_bench_layer.py --benchmark-only`.
"""
from __future__ import annotations

import contextlib
import math
from functools import lru_cache

import pytest
import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer

import dtb_ext
from dtb_ext.models.dynamic_encoder import DynamicEncoder
from dtb_ext.ops import reference_ops

SEQ_LEN = 384
SIZES = {
    "minilm-l6": dict(hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
VARIANTS = ["hf-eager", "hf-sdpa", "patched-full", "keep-0.75", "keep-0.5", "keep-0.25", "reference-keep-0.5"]


@lru_cache(maxsize=2)
def _layers(size: str) -> dict[str, nn.Module]:
    """HF layers (eager, sdpa) and a one-layer dynamic encoder, all sharing one set of random weights."""
    torch.manual_seed(0)
    layers = {}
    for implementation in ("eager", "sdpa"):
        config = BertConfig(**SIZES[size], num_hidden_layers=1, attn_implementation=implementation)
        layers[implementation] = BertLayer(config).eval()
    layers["sdpa"].load_state_dict(layers["eager"].state_dict())
    config = BertConfig(**SIZES[size], num_hidden_layers=1)
    layers["dynamic"] = DynamicEncoder(nn.ModuleList([layers["sdpa"]]), config, keep_first=False).eval()
    return layers


def _kept(variant: str) -> int | None:
    variant = variant.removeprefix("reference-")
    return math.ceil(float(variant.removeprefix("keep-")) * SEQ_LEN) if variant.startswith("keep-") else None


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_layer_forward(benchmark, variant: str, size: str, batch: int) -> None:
    layers = _layers(size)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, SEQ_LEN, SIZES[size]["hidden_size"], generator=generator)
    mask = torch.ones(batch, SEQ_LEN, dtype=torch.bool)
    kept = _kept(variant)
    length_config = None if kept is None else dtb_ext.LengthConfig.absolute([kept])
    config = layers["dynamic"].config
    full = dtb_ext.count_macs(config, None, SEQ_LEN).total
    benchmark.group = f"layer {size} B={batch} L={SEQ_LEN}"
    benchmark.extra_info.update(
        level="layer", model=size, batch=batch, seq_len=SEQ_LEN, variant=variant, kept=kept or SEQ_LEN,
        device="cpu", dtype="float32", threads=torch.get_num_threads(), kernels=dtb_ext.has_kernels(),
        macs_ratio=round(full / dtb_ext.count_macs(config, None if kept is None else [kept], SEQ_LEN).total, 3),
    )

    if variant.startswith("hf-"):
        layer = layers[variant.removeprefix("hf-")]

        def forward():
            with torch.inference_mode():
                return layer(hidden)
    else:
        encoder = layers["dynamic"]
        ops_in_use = reference_ops if variant.startswith("reference-") else contextlib.nullcontext

        def forward():
            with torch.inference_mode(), ops_in_use():
                return encoder.encode(hidden, mask, length_config)

    cost = batch * (4 if size == "bert-base" else 1)
    benchmark.pedantic(forward, rounds=20 if cost <= 4 else 8, iterations=1, warmup_rounds=1)
