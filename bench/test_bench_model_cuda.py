"""Whole-model forward on a GPU: unpatched Hugging Face (SDPA, fp32 and bf16) against the patched model in fp32
and bf16 at several length configs, every variant interleaved with the others within each round (as
bench/test_bench_model.py does on the CPU). Skipped without a CUDA device (conftest.py).

Paper protocol: every example a full 384-token window, random token ids, random weights in the shapes of
MiniLM-L6 and BERT-base (speed only). Each timed call ends with `torch.cuda.synchronize()`, so a call's time is its
whole GPU work plus the host-side launches and the dynamic encoder's keep-count synchronisation. The MACs ratio
(ideal speedup over full length) is in each variant's `extra_info`. Reported, not pass/fail.
Run: `python -m pytest bench/test_bench_model_cuda.py --benchmark-only`.
"""
from __future__ import annotations

import copy
import warnings
from functools import lru_cache

import pytest
import torch
from transformers import BertConfig, BertModel

from test_bench_model import RANDOM_CONFIGS, _length_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import dtb_ext

pytestmark = pytest.mark.cuda

SEQ_LEN = 384
ITEMS = 3
ROUNDS = 10
SHAPES = {
    "minilm-l6": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "bert-base": RANDOM_CONFIGS["bert-base"],
}
OURS = {"fp32": ["full", "ratio-0.5"], "bf16": ["full", "ratio-0.75", "ratio-0.5", "ratio-0.25", "lat-decreasing"]}


@lru_cache(maxsize=2)
def _models(name: str) -> dict[str, torch.nn.Module]:
    """HF SDPA in fp32 and bf16 and the patched model in fp32 and bf16, one set of random weights, on the GPU."""
    torch.manual_seed(0)
    config = BertConfig(**SHAPES[name], max_position_embeddings=512)
    hf = BertModel._from_config(config, attn_implementation="sdpa").eval()
    patched = dtb_ext.patch(copy.deepcopy(hf))
    return {
        "hf-fp32-sdpa": hf.cuda(),
        "hf-bf16-sdpa": copy.deepcopy(hf).to(torch.bfloat16),
        "ours-fp32": dtb_ext.prepare_for_precision(copy.deepcopy(patched).cuda(), "fp32").eval(),
        "ours-bf16": dtb_ext.prepare_for_precision(copy.deepcopy(patched).cuda(), "bf16").eval(),
    }


def _forward(model: torch.nn.Module, config, mask: torch.Tensor):
    def run(ids: torch.Tensor) -> None:
        with torch.inference_mode():
            if dtb_ext.is_patched(model):
                with dtb_ext.length_config(model, config):
                    model(input_ids=ids, attention_mask=mask)
            else:
                model(input_ids=ids, attention_mask=mask)
        torch.cuda.synchronize()

    return run


@pytest.mark.parametrize("batch", [1, 32, 128])
@pytest.mark.parametrize("name", list(SHAPES))
def test_model_forward_interleaved_cuda(benchmark, time_interleaved, name: str, batch: int) -> None:
    models = _models(name)
    model_config = models["hf-fp32-sdpa"].config
    num_layers = model_config.num_hidden_layers
    generator = torch.Generator().manual_seed(0)
    items = [torch.randint(1000, 20000, (batch, SEQ_LEN), generator=generator).cuda() for _ in range(ITEMS)]
    mask = torch.ones(batch, SEQ_LEN, dtype=torch.long, device="cuda")
    variants = {name: (models[name], None) for name in ("hf-fp32-sdpa", "hf-bf16-sdpa")}
    for precision, configs in OURS.items():
        for config in configs:
            variants[f"ours-{precision}-{config}"] = (models[f"ours-{precision}"], _length_config(config, num_layers))
    full = dtb_ext.count_macs(model_config, None, SEQ_LEN).total
    extra = {
        variant: {"macs_ratio": round(full / dtb_ext.count_macs(model_config, config, SEQ_LEN).total, 3),
                  "length_config": None if config is None else str(config)}
        for variant, (_, config) in variants.items()
    }
    benchmark.group = f"cuda {name} B={batch} L={SEQ_LEN}"
    benchmark.extra_info.update(
        level="model", interleaved=True, model=name, batch=batch, seq_len=SEQ_LEN, device="cuda",
        gpu=torch.cuda.get_device_name(), torch=torch.__version__, kernels=dtb_ext.has_kernels(),
        items_are=f"random inputs [{batch}, {SEQ_LEN}]",
    )
    runs = {variant: _forward(model, config, mask) for variant, (model, config) in variants.items()}
    time_interleaved(runs, items, ROUNDS, extra)
