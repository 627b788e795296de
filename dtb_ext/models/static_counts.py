"""Keep counts for the static-shape path of the dynamic encoder (docs/design.md §2, "Static shapes").

The dynamic path reads each example's real length on the host (`mask.sum(dim=1).tolist()`) and sizes every layer's
gathered tensor from the batch. The static path decides everything on the host from the configuration and the
padded length L alone, and finds each example's keep counts on the device by looking its real length up in a
table, so a forward pass reads no tensor value back and can be captured whole in a CUDA graph.

The table is the host rule itself: row i, column n is what `LengthConfig.keep_counts([n])` keeps at layer i, for
every n in 1..L. Looking lengths up in it gives exactly the host's counts (no float ceil on the device), and a
layer's gathered width is its column L, the most any example of padded length L can keep there (the rule is
non-decreasing in n). Column 0 (an example without a real token) keeps 1 slot, a valid count for the ops; the
encoder turns that example's output into NaN.

Shapes: B batch, L padded input length, N layers.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dtb_ext.config import LengthConfig, MixedLengthConfig


@dataclass(frozen=True)
class KeepTable:
    """One example's keep rule at padded length L.

    counts: [N, L + 1] int64, counts[i, n] = tokens an example with n real input tokens keeps at layer i.
    widths: counts[i, L] per layer, the largest count of layer i.
    drops: per layer, whether it keeps fewer tokens than enter it for some n in 1..L.
    """

    counts: Tensor
    widths: tuple[int, ...]
    drops: tuple[bool, ...]


@dataclass(frozen=True)
class StaticKeepCounts:
    """A batch's keep counts, on the device, with the per-layer decisions that depend on shapes only.

    counts: [N, B] int64, row i what each example keeps at layer i.
    widths: per layer, the gathered width K_i (the largest count any example of the batch's configurations could
        keep at padded length L; non-increasing).
    drops: per layer, whether some example could keep fewer real tokens than enter it.
    """

    counts: Tensor
    widths: tuple[int, ...]
    drops: tuple[bool, ...]

    def drops_between(self, previous: int, index: int) -> bool:
        """Whether layer `index` can keep fewer real tokens than the output of layer `previous` (-1: the input)
        holds; the layers in between are skipped (LayerDrop). Counts never grow from layer to layer, so that is
        whether any layer in (previous, index] drops."""
        return any(self.drops[previous + 1:index + 1])


def keep_table(config: LengthConfig | None, length: int, num_layers: int, device: torch.device) -> KeepTable:
    """`config`'s keep counts (None: full length) for every real length 0..`length`, as a KeepTable on `device`.

    Built on the host with `config.keep_counts` and copied to the device (one host-to-device copy, which a stream
    being captured into a CUDA graph does not allow: build it before capture).
    """
    lengths = list(range(1, length + 1))
    rows = [lengths] * num_layers if config is None else config.keep_counts(lengths)
    if len(rows) != num_layers:
        raise ValueError(
            f"the length configuration needs one value per layer: expected {num_layers}, got {len(rows)}"
        )
    drops = []
    entering = lengths
    for row in rows:
        drops.append(row != entering)
        entering = row
    counts = torch.tensor([[1, *row] for row in rows], dtype=torch.int64, device=device)
    return KeepTable(counts, tuple(row[-1] for row in rows), tuple(drops))


def static_keep_counts(tables: Sequence[KeepTable], mask: Tensor) -> StaticKeepCounts:
    """Each example's keep counts, looked up on the device from its real length.

    Args:
        tables: one KeepTable for the whole batch, or one per example (mixed configurations), all at L.
        mask: [B, L] bool, True for real tokens.

    Returns:
        StaticKeepCounts with [N, B] counts.
    """
    batch, length = mask.shape
    layers = tables[0].counts.shape[0]
    if len(tables) == 1:
        per_example = tables[0].counts[:, None, :].expand(layers, batch, length + 1)
    else:
        per_example = torch.stack([table.counts for table in tables], dim=1)
    real = mask.sum(dim=1)
    counts = per_example.gather(2, real[None, :, None].expand(layers, batch, 1)).squeeze(2)
    widths = tuple(max(column) for column in zip(*(table.widths for table in tables)))
    drops = tuple(any(column) for column in zip(*(table.drops for table in tables)))
    return StaticKeepCounts(counts, widths, drops)


class KeepTables:
    """An encoder's KeepTables, one per (example configuration, padded length, device), built on first use.

    Never evicted: a captured CUDA graph reads the table it was captured with, so freeing one would let its
    memory be reused under the graph. Each is small (N x (L + 1) int64; 18 KB for 6 layers at L = 384) and there
    is one per distinct LengthConfig and input length, not per batch: a mixed batch stacks its examples' tables.
    """

    def __init__(self) -> None:
        self._tables: dict[tuple[LengthConfig | None, int, torch.device], KeepTable] = {}

    def counts(self, length_config: LengthConfig | MixedLengthConfig, mask: Tensor,
               num_layers: int) -> StaticKeepCounts:
        """The keep counts of the batch with [B, L] bool `mask` under `length_config`."""
        if isinstance(length_config, MixedLengthConfig):
            length_config.check_batch_size(mask.shape[0])
            configs: Sequence[LengthConfig | None] = length_config.configs
        else:
            configs = (length_config,)
        tables = [self._table(config, mask.shape[1], num_layers, mask.device) for config in configs]
        return static_keep_counts(tables, mask)

    def _table(self, config: LengthConfig | None, length: int, num_layers: int, device: torch.device) -> KeepTable:
        key = (config, length, device)
        table = self._tables.get(key)
        if table is None:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise ValueError(
                    f"no keep-count table for {config} at input length {length} on {device} yet, and a stream "
                    "being captured into a CUDA graph cannot copy one to the device: run the model once under "
                    "dtb_ext.static_shapes() with inputs of this shape and this length configuration before "
                    "capturing (the usual warm-up)"
                )
            table = keep_table(config, length, num_layers, device)
            self._tables[key] = table
        return table
