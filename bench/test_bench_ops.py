"""The fused dtb ops against the pure-PyTorch chains LAT uses and against the library's own pure-PyTorch
reference ops (`dtb_ext.reference`, full semantics: masks, ties, padding), on identical inputs (pytest-benchmark;
reported, not pass/fail). Run: `.venv/bin/python -m pytest bench/test_bench_ops.py --benchmark-only`.

On a shared machine, `DTB_BENCH_THREADS=1 ... --benchmark-timer=time.process_time` gives the steadiest figures.

Targets: softmax_with_significance at most 10% slower than plain torch.softmax; select_and_gather at least 3x
faster than topk + sort + gather. Grid: B in {1, 32}, H = 12, L = 384, D in {384, 768}, keep in {0.25, 0.5,
0.75} * L, float32 and bfloat16. Every mask is full (no padding), so the kernels skip no work.
"""
from __future__ import annotations

import math

import pytest
import torch

from dtb_ext import ops, reference

HEADS = 12
LENGTH = 384
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def run(benchmark, function, device: str, rounds: int) -> None:
    """Times `function` with a few rounds (the large CPU cases take ~0.1 s each); CUDA work is synchronised."""
    if device == "cuda":
        def timed():
            function()
            torch.cuda.synchronize()
    else:
        timed = function
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)


def describe(benchmark, group: str, implementation: str, device: str, dtype: str, **extra) -> None:
    benchmark.group = group
    benchmark.extra_info.update(
        {"implementation": implementation, "device": device, "dtype": dtype,
         "threads": torch.get_num_threads(), **extra}
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("implementation", ["fused", "reference", "softmax_then_sum", "softmax_only"])
def test_softmax_with_significance(
    benchmark, record_times, implementation: str, batch: int, dtype: str, device: str
) -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(batch, HEADS, LENGTH, LENGTH, generator=generator).to(device, DTYPES[dtype])
    mask = torch.ones(batch, LENGTH, dtype=torch.long, device=device)
    # The additive mask the Hugging Face attention adds before its softmax.
    bias = ((1 - mask[:, None, None, :]) * torch.finfo(scores.dtype).min).to(scores.dtype)

    def fused():
        return ops.softmax_with_significance(scores, mask)

    def softmax_then_sum():
        probs = torch.softmax(scores + bias, dim=-1)
        return probs, probs.sum(dim=(1, 2), dtype=torch.float32)

    def softmax_only():
        return torch.softmax(scores, dim=-1)

    def reference_op():
        return reference.softmax_with_significance(scores, mask)

    group = f"softmax B={batch} H={HEADS} L={LENGTH} {dtype} {device}"
    describe(benchmark, group, implementation, device, dtype, batch=batch, heads=HEADS, length=LENGTH)
    function = {"fused": fused, "reference": reference_op, "softmax_then_sum": softmax_then_sum,
                "softmax_only": softmax_only}[implementation]
    run(benchmark, function, device, rounds=8 if batch > 1 else 30)
    record_times(group, implementation, benchmark)


def selection_inputs(batch: int, width: int, keep_ratio: float, dtype: str, device: str):
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(batch, LENGTH, width, generator=generator).to(device, DTYPES[dtype])
    significance = torch.rand(batch, LENGTH, generator=generator).to(device)
    mask = torch.ones(batch, LENGTH, dtype=torch.long, device=device)
    kept = math.ceil(keep_ratio * LENGTH)
    keep = torch.full((batch,), kept, dtype=torch.long, device=device)
    return hidden, significance, mask, keep, kept


SELECTION_GRID = [
    pytest.param(batch, width, ratio, id=f"B{batch}-D{width}-keep{ratio}")
    for batch in (1, 32)
    for width in (384, 768)
    for ratio in (0.25, 0.5, 0.75)
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("batch, width, keep_ratio", SELECTION_GRID)
@pytest.mark.parametrize("implementation", ["fused", "reference", "topk_sort_gather"])
def test_select_and_gather(benchmark, record_times, implementation, batch, width, keep_ratio, dtype, device) -> None:
    hidden, significance, mask, keep, kept = selection_inputs(batch, width, keep_ratio, dtype, device)

    def fused():
        return ops.select_and_gather(hidden, significance, mask, keep, kept, False)

    def topk_sort_gather():
        indices = significance.topk(kept, dim=1).indices.sort(dim=1).values
        return torch.gather(hidden, 1, indices[:, :, None].expand(-1, -1, width))

    group = f"select B={batch} L={LENGTH} D={width} keep={keep_ratio} {dtype} {device}"
    describe(benchmark, group, implementation, device, dtype, batch=batch, width=width, keep_ratio=keep_ratio)
    def reference_op():
        return reference.select_and_gather(hidden, significance, mask, keep, kept, False)

    function = {"fused": fused, "reference": reference_op, "topk_sort_gather": topk_sort_gather}[implementation]
    run(benchmark, function, device, rounds=50)
    record_times(group, implementation, benchmark)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("batch, width, keep_ratio", SELECTION_GRID)
@pytest.mark.parametrize("implementation", ["fused", "reference", "scatter"])
def test_restore(benchmark, record_times, implementation, batch, width, keep_ratio, dtype, device) -> None:
    hidden, significance, mask, keep, kept = selection_inputs(batch, width, keep_ratio, dtype, device)
    src, _, positions = ops.select_and_gather(hidden, significance, mask, keep, kept, False)
    base = torch.randn_like(hidden)

    def fused():
        return ops.restore(base, src, positions)

    def scatter():
        return base.scatter(1, positions[:, :, None].expand(-1, -1, width), src)

    group = f"restore B={batch} L={LENGTH} D={width} keep={keep_ratio} {dtype} {device}"
    describe(benchmark, group, implementation, device, dtype, batch=batch, width=width, keep_ratio=keep_ratio)
    def reference_op():
        return reference.restore(base, src, positions)

    function = {"fused": fused, "reference": reference_op, "scatter": scatter}[implementation]
    run(benchmark, function, device, rounds=50)
    record_times(group, implementation, benchmark)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("batch", [1, 32])
def test_softmax_with_significance_interleaved(benchmark, time_interleaved, batch: int, dtype: str) -> None:
    """The fused op and torch.softmax alone on identical scores, alternating call by call (the 10 % target is a
    ratio of these two; timed one after the other, a drifting host lands in the ratio)."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(batch, HEADS, LENGTH, LENGTH, generator=generator).to(DTYPES[dtype])
    mask = torch.ones(batch, LENGTH, dtype=torch.long)
    benchmark.group = f"softmax interleaved B={batch} H={HEADS} L={LENGTH} {dtype} cpu"
    benchmark.extra_info.update(level="ops", interleaved=True, device="cpu", dtype=dtype, batch=batch,
                                threads=torch.get_num_threads(), items_are="the same scores",
                                baselines=["softmax_only"])
    time_interleaved({"fused": lambda s: ops.softmax_with_significance(s, mask),
                      "softmax_only": lambda s: torch.softmax(s, dim=-1)}, [scores] * 4, 8 if batch > 1 else 30)


ATTENTION_LENGTHS = [184, 384]  # the mean dev-a window of the default model's QA features, and the longest


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("length", ATTENTION_LENGTHS)
@pytest.mark.parametrize("batch", [1, 32])
def test_attention_interleaved(benchmark, time_interleaved, batch: int, length: int, dtype: str) -> None:
    """dtb::attention against torch's SDPA (what the dynamic encoder ran before, and HF's "sdpa" attention) and
    the explicit matmul-softmax-matmul chain, on identical strided views of one fused QKV projection (H = 12,
    d = 32: MiniLM's heads), alternating call by call. At batch 32 the examples' lengths are spread over
    [length / 2, length] (dynamic padding), so every variant masks keys."""
    heads, size = 12, 32
    generator = torch.Generator().manual_seed(length)
    fused = torch.randn(batch, length, 3 * heads * size, generator=generator).to(DTYPES[dtype])
    query, key, value = (part.view(batch, length, heads, size).transpose(1, 2)
                         for part in fused.split(heads * size, dim=-1))
    lengths = torch.linspace(length // 2, length, batch).round().long() if batch > 1 else torch.tensor([length])
    mask = torch.arange(length)[None, :] < lengths[:, None]
    key_mask = mask[:, None, None, :]
    scale = size ** -0.5

    def explicit(_):
        scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale).masked_fill_(~key_mask, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), value)

    benchmark.group = f"attention interleaved B={batch} H={heads} L={length} d={size} {dtype} cpu"
    benchmark.extra_info.update(level="ops", interleaved=True, device="cpu", dtype=dtype, batch=batch, length=length,
                                threads=torch.get_num_threads(), items_are="the same query, key and value",
                                bf16_dot_products=ops.kernel_info().get("cpu_bf16_dot_products"),
                                amx_attention=ops.kernel_info().get("cpu_amx_attention"), baselines=["sdpa"])
    with torch.inference_mode():
        time_interleaved({
            "fused": lambda _: ops.attention(query, key, value, mask, scale),
            "sdpa": lambda _: torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=key_mask,
                                                                             scale=scale),
            "explicit": explicit,
        }, [None] * 4, 10 if batch == 1 else 3)


LINEAR_SHAPES = [(384, 1152), (384, 1536), (1536, 384)]  # MiniLM's fused QKV, intermediate and output Linears


@pytest.mark.parametrize("in_features, out_features", LINEAR_SHAPES)
@pytest.mark.parametrize("rows", [184, 32 * 184])
def test_int8_linear_interleaved(benchmark, time_interleaved, rows: int, in_features: int, out_features: int) -> None:
    """An encoder Linear on [rows, K] bf16 activations (184 rows: one mean-length dev-a window; 32 x 184: a batch
    of 32), alternating call by call: `Int8Linear` (per-row quantize, oneDNN int8 matmul on the prepacked weight,
    fused dequantize epilogue; the int8 model's path) against the bf16 prepacked oneDNN Linear (the bf16 model's
    path, `PackedLinears`) and plain `F.linear` in bf16."""
    from dtb_ext.precision.int8 import Int8Linear

    generator = torch.Generator().manual_seed(in_features + out_features)
    linear = torch.nn.Linear(in_features, out_features)
    hidden = torch.randn(rows, in_features, generator=generator).to(torch.bfloat16)
    quantized = Int8Linear.from_linear(linear)
    weight, bias = linear.weight.detach().to(torch.bfloat16), linear.bias.detach().to(torch.bfloat16)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
    benchmark.group = f"encoder linear interleaved M={rows} {in_features}->{out_features} bfloat16 cpu"
    benchmark.extra_info.update(level="ops", interleaved=True, device="cpu", dtype="bfloat16", rows=rows,
                                in_features=in_features, out_features=out_features, threads=torch.get_num_threads(),
                                items_are="the same activations", baselines=["bf16_packed"])
    with torch.inference_mode():
        time_interleaved({
            "int8": quantized,
            "bf16_packed": lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], ""),
            "bf16_linear": lambda x: torch.nn.functional.linear(x, weight, bias),
        }, [hidden] * 4, 20 if rows < 1000 else 3)


@pytest.mark.parametrize("rows", [184, 32 * 184])
def test_int8_feed_forward_interleaved(benchmark, time_interleaved, rows: int) -> None:
    """A MiniLM feed-forward (intermediate + GELU, output + residual + LayerNorm) on [1, rows, 384] bf16
    activations, alternating call by call: the int8 model's fused path (`PackedLinears.feed_forward`: the GELU
    output quantized for the output Linear in its epilogue, LayerNorm in the output Linear's epilogue) against the
    same int8 layers as two separate blocks (each Linear quantizes its input, LayerNorm after; the path before
    the fusion) and the bf16 model's prepacked oneDNN path."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    from dtb_ext.models.packed_linear import PackedLinears
    from dtb_ext.precision.int8 import Int8Linear, int8_linear

    torch.manual_seed(0)
    config = BertConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536)
    layer = BertLayer(config).eval()
    int8_layer = BertLayer(config).eval()
    int8_layer.load_state_dict(layer.state_dict())
    for block in (int8_layer.intermediate, int8_layer.output):
        block.dense = Int8Linear.from_linear(block.dense)
    layer.to(torch.bfloat16)
    int8_layer.to(torch.bfloat16)
    hidden = torch.randn(1, rows, config.hidden_size).to(torch.bfloat16)
    bf16_linears, int8_linears = PackedLinears(), PackedLinears()

    def two_blocks(x):
        inner = int8_linear(x, int8_layer.intermediate.dense, "gelu")
        return int8_layer.output.LayerNorm(int8_linear(inner, int8_layer.output.dense, residual=x))

    benchmark.group = f"int8 feed-forward interleaved M={rows} 384->1536->384 bfloat16 cpu"
    benchmark.extra_info.update(level="ops", interleaved=True, device="cpu", dtype="bfloat16", rows=rows,
                                threads=torch.get_num_threads(), items_are="the same activations",
                                baselines=["bf16_packed", "int8_two_blocks"])
    with torch.inference_mode():
        time_interleaved({
            "int8_fused": lambda x: int8_linears.feed_forward(0, int8_layer.intermediate, int8_layer.output, x),
            "int8_two_blocks": two_blocks,
            "bf16_packed": lambda x: bf16_linears.feed_forward(0, layer.intermediate, layer.output, x),
        }, [hidden] * 4, 20 if rows < 1000 else 3)
