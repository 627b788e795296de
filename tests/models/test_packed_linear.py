"""Prepacked Linears of the dynamic encoder (dtb_ext/models/packed_linear.py): each path equals the Hugging Face
block it stands in for (fp32 and bf16), the cache follows weight changes (in-place updates, loaded weights, dtype
conversions), and the blocks run as HF wrote them wherever packing would change behaviour (gradients recorded,
training mode, hooks, other activation or layer types)."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertIntermediate, BertOutput, BertSelfAttention, BertSelfOutput

from dtb_ext.models.packed_linear import PackedLinears

DTYPES = [torch.float32, torch.bfloat16]
# bf16: the fused paths round once where HF rounds after the matmul and again after the GELU / residual add.
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=2e-2)}


def _config(**overrides) -> BertConfig:
    return BertConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, **overrides)


def _blocks(dtype: torch.dtype, seed: int = 0, **config) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    blocks = {"attention": BertSelfAttention(_config(**config)), "self_output": BertSelfOutput(_config(**config)),
              "intermediate": BertIntermediate(_config(**config)), "output": BertOutput(_config(**config))}
    return {name: block.to(dtype).eval() for name, block in blocks.items()}


def _inputs(dtype: torch.dtype, width: int = 32, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(2, 7, width).to(dtype)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(actual.float(), expected.float(), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_projections_equal_the_three_linears(dtype):
    attention, hidden = _blocks(dtype)["attention"], _inputs(dtype)
    linears = (attention.query, attention.key, attention.value)
    with torch.no_grad():
        for fused, plain in zip(PackedLinears().projections(0, linears, hidden), [lin(hidden) for lin in linears]):
            _assert_close(fused, plain, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "relu"])
def test_intermediate_equals_hf(dtype, activation):
    block, hidden = _blocks(dtype, hidden_act=activation)["intermediate"], _inputs(dtype)
    with torch.no_grad():
        _assert_close(PackedLinears().intermediate(0, block, hidden), block(hidden), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, width", [("self_output", 32), ("output", 64)])
def test_output_blocks_equal_hf(dtype, name, width):
    block, hidden, residual = _blocks(dtype)[name], _inputs(dtype, width), _inputs(dtype, 32, seed=2)
    with torch.no_grad():
        _assert_close(PackedLinears().output(0, block, hidden, residual), block(hidden, residual), dtype)


def test_the_cpu_path_packs_its_weights():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    blocks, packed = _blocks(torch.float32), PackedLinears()
    with torch.no_grad():
        packed.intermediate("ffn", blocks["intermediate"], _inputs(torch.float32))
    assert packed._entries["ffn"].weight.is_mkldnn


def test_in_place_updates_loaded_weights_and_dtype_conversions_rebuild_the_cache():
    blocks, other = _blocks(torch.float32), _blocks(torch.float32, seed=5)
    block, hidden, packed = blocks["intermediate"], _inputs(torch.float32), PackedLinears()
    with torch.no_grad():
        packed.intermediate(0, block, hidden)
        block.dense.weight.mul_(2.0)
        _assert_close(packed.intermediate(0, block, hidden), block(hidden), torch.float32)
        block.load_state_dict(other["intermediate"].state_dict())
        _assert_close(packed.intermediate(0, block, hidden), other["intermediate"](hidden), torch.float32)
        block.to(torch.bfloat16)
        _assert_close(packed.intermediate(0, block, hidden.bfloat16()), block(hidden.bfloat16()), torch.bfloat16)


def test_keys_are_cached_apart():
    first, second = _blocks(torch.float32)["output"], _blocks(torch.float32, seed=3)["output"]
    hidden, residual, packed = _inputs(torch.float32, 64), _inputs(torch.float32, 32, seed=2), PackedLinears()
    with torch.no_grad():
        for key, block in ((0, first), (1, second), (0, first)):
            _assert_close(packed.output(key, block, hidden, residual), block(hidden, residual), torch.float32)


def test_gradients_reach_the_weights_where_they_are_recorded():
    blocks, hidden = _blocks(torch.float32), _inputs(torch.float32)
    attention, packed = blocks["attention"], PackedLinears()
    outputs = packed.projections(0, (attention.query, attention.key, attention.value), hidden)
    intermediate = packed.intermediate(1, blocks["intermediate"], hidden)
    output = packed.output(2, blocks["output"], intermediate, hidden)
    (sum(o.sum() for o in outputs) + output.sum()).backward()
    for name in ("attention", "intermediate", "output"):
        assert all(p.grad is not None for p in blocks[name].parameters() if p.requires_grad), name


def test_training_mode_runs_hf_dropout():
    block = _blocks(torch.float32, hidden_dropout_prob=0.5)["self_output"].train()
    hidden, residual = _inputs(torch.float32), _inputs(torch.float32, seed=2)
    torch.manual_seed(0)
    with torch.no_grad():
        packed = PackedLinears().output(0, block, hidden, residual)
    torch.manual_seed(0)
    with torch.no_grad():
        torch.testing.assert_close(packed, block(hidden, residual))


def test_hooks_and_other_layer_types_run_the_modules_themselves():
    blocks, hidden = _blocks(torch.float32), _inputs(torch.float32)
    seen = []
    blocks["intermediate"].dense.register_forward_hook(lambda module, args, output: seen.append(output))
    blocks["attention"].key.register_forward_hook(lambda module, args, output: seen.append(output))
    attention = blocks["attention"]
    with torch.no_grad():
        PackedLinears().intermediate(0, blocks["intermediate"], hidden)
        PackedLinears().projections(1, (attention.query, attention.key, attention.value), hidden)
    assert len(seen) == 2

    class Scaled(nn.Linear):
        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return 3.0 * super().forward(hidden)

    block = _blocks(torch.float32)["intermediate"]
    scaled = Scaled(32, 64)
    scaled.load_state_dict(block.dense.state_dict())
    expected = block.intermediate_act_fn(3.0 * block.dense(hidden))
    block.dense = scaled
    with torch.no_grad():
        torch.testing.assert_close(PackedLinears().intermediate(0, block, hidden), expected.detach())


class _PackedIntermediate(nn.Module):
    """A module holding a filled cache, as a patched encoder does."""

    def __init__(self) -> None:
        super().__init__()
        self.intermediate = _blocks(torch.float32)["intermediate"]
        self.packed = PackedLinears()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.packed.intermediate(0, self.intermediate, hidden)


def test_a_model_with_a_filled_cache_can_be_copied_and_pickled():
    layer, hidden = _PackedIntermediate(), _inputs(torch.float32)
    with torch.no_grad():
        expected = layer(hidden)
        for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            assert clone.packed._entries == {}
            torch.testing.assert_close(clone(hidden), expected)
