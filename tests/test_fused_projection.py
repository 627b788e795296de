"""The fused query/key/value projection (dtb_ext/models/fused_projection.py): equal to the three Linears, rebuilt
whenever a source weight changes (in-place update, dtype conversion, new weights loaded), and not used where it
would change behaviour (gradients recorded, hooks, layers that are not plain nn.Linear)."""
from __future__ import annotations

import torch
from torch import nn

from dtb_ext.models.fused_projection import QKVProjection


class _SelfAttention(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)


def _three(attention: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return attention.query(hidden), attention.key(hidden), attention.value(hidden)


def _setup(seed: int = 0) -> tuple[_SelfAttention, torch.Tensor]:
    torch.manual_seed(seed)
    return _SelfAttention(), torch.randn(2, 5, 16)


def test_fused_equals_the_three_linears():
    attention, hidden = _setup()
    with torch.no_grad():
        for fused, plain in zip(QKVProjection()(0, attention, hidden), _three(attention, hidden)):
            torch.testing.assert_close(fused, plain)


def test_fused_equals_the_three_linears_in_bf16():
    attention, hidden = _setup()
    attention = attention.to(torch.bfloat16)
    hidden = hidden.to(torch.bfloat16)
    with torch.no_grad():
        for fused, plain in zip(QKVProjection()(0, attention, hidden), _three(attention, hidden)):
            assert fused.dtype == torch.bfloat16
            torch.testing.assert_close(fused.float(), plain.float(), atol=2e-2, rtol=2e-2)


def test_an_in_place_update_rebuilds_the_fused_weights():
    attention, hidden = _setup()
    projection = QKVProjection()
    with torch.no_grad():
        projection(0, attention, hidden)
        attention.key.weight.mul_(2.0)
        attention.value.bias.add_(1.0)
        for fused, plain in zip(projection(0, attention, hidden), _three(attention, hidden)):
            torch.testing.assert_close(fused, plain)


def test_loaded_weights_and_a_dtype_conversion_rebuild_the_fused_weights():
    attention, hidden = _setup()
    other, _ = _setup(seed=1)
    projection = QKVProjection()
    with torch.no_grad():
        projection(0, attention, hidden)
        attention.load_state_dict(other.state_dict())
        for fused, plain in zip(projection(0, attention, hidden), _three(other, hidden)):
            torch.testing.assert_close(fused, plain)
        attention.to(torch.float64)
        fused = projection(0, attention, hidden.double())
        assert all(tensor.dtype == torch.float64 for tensor in fused)


def test_layers_are_cached_apart():
    first, hidden = _setup()
    second, _ = _setup(seed=1)
    projection = QKVProjection()
    with torch.no_grad():
        for index, attention in ((0, first), (1, second), (0, first)):
            for fused, plain in zip(projection(index, attention, hidden), _three(attention, hidden)):
                torch.testing.assert_close(fused, plain)


def test_gradients_reach_the_linears_where_they_are_recorded():
    attention, hidden = _setup()
    query, key, value = QKVProjection()(0, attention, hidden)
    (query.sum() + key.sum() + value.sum()).backward()
    assert all(p.grad is not None for p in attention.parameters())


def test_hooks_and_other_layer_types_run_the_modules_themselves():
    attention, hidden = _setup()
    seen = []
    attention.key.register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        QKVProjection()(0, attention, hidden)
    assert len(seen) == 1

    class Scaled(nn.Linear):
        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return 3.0 * super().forward(hidden)

    attention, hidden = _setup()
    plain_key = attention.key(hidden)
    scaled = Scaled(16, 16)
    scaled.load_state_dict(attention.key.state_dict())
    attention.key = scaled
    with torch.no_grad():
        _, key, _ = QKVProjection()(0, attention, hidden)
    torch.testing.assert_close(key, 3.0 * plain_key.detach())
