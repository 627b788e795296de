"""The training loop's SQuAD pieces on Hugging Face `Trainer`: the feature dataset, dynamic padding, length-grouped
batches that a resumed run replays exactly, and `QATrainer`, whose loss is pluggable (LengthDrop and distillation
plug in there, see lengthdrop.py and distill.py).

Trainer brings the launch story (torchrun/accelerate, multi-GPU), safetensors checkpoints and exact resume
(model, optimizer, scheduler, RNG, data position); `run.py` builds a trainer from TrainOptions and runs it.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

# (model, inputs) -> (loss, outputs). The default is the model's own start/end cross-entropy.
LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, Any]]


class QAFeatureDataset(torch.utils.data.Dataset):
    """Training features (dicts of unpadded lists, see prepare_train_features) as a map-style dataset."""

    def __init__(self, features: Sequence[dict[str, Any]]) -> None:
        self.features = list(features)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


class DynamicPaddingCollator:
    """Pads a batch of features to its longest one: input_ids/token_type_ids/attention_mask (B, T) and
    start_positions/end_positions (B,)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(feature["input_ids"]) for feature in features)
        batch = {
            "input_ids": torch.full((len(features), width), self.pad_token_id, dtype=torch.long),
            "token_type_ids": torch.zeros((len(features), width), dtype=torch.long),
            "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
        }
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            for name in ("input_ids", "token_type_ids", "attention_mask"):
                batch[name][row, :n] = torch.tensor(feature[name], dtype=torch.long)
        for name in ("start_positions", "end_positions"):
            batch[name] = torch.tensor([feature[name] for feature in features], dtype=torch.long)
        return batch


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from a generator seeded with `seed + epoch`, so the order of an epoch does not
    depend on the global RNG: a run resumed in the middle of any epoch sees exactly the batches of an
    uninterrupted run (Trainer's own LengthGroupedSampler draws from the global RNG, which differs after a
    resume once an epoch boundary has been crossed)."""

    def __init__(self, batch_size: int, lengths: Sequence[int], seed: int) -> None:
        super().__init__(batch_size, lengths=list(lengths))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class QATrainer(Trainer):
    """Trainer whose loss is a pluggable `loss_fn(model, inputs) -> (loss, outputs)`; None keeps the model's
    own loss. LengthDrop/distillation supply their own loss_fn (several forward passes per step).
    Batches group features of similar length (see EpochSeededLengthGroupedSampler)."""

    def __init__(self, *args: Any, loss_fn: LossFn | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or not isinstance(dataset, QAFeatureDataset):
            return super()._get_train_sampler(train_dataset)
        return EpochSeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=[len(feature["input_ids"]) for feature in dataset.features],
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def model_for_export(self) -> torch.nn.Module:
        """The model to export after training (subclasses strip training-only modules)."""
        return self.model

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_fn is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        loss, outputs = self.loss_fn(model, inputs)
        return (loss, outputs) if return_outputs else loss
