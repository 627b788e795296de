"""Knowledge distillation (TinyBERT-style) of a span-QA student from any span-QA teacher, on Hugging Face Trainer.

Loss of the student on a batch (B features, L tokens):

    alpha * T^2 * soft_ce(student / T, teacher / T)            start and end logits, averaged
  + (1 - alpha) * hard-label cross-entropy                      the model's own QA loss
  + hidden_weight * MSE(W h_student[s], h_teacher[t])           over the (s, t) pairs of the layer map
  + attention_weight * MSE(P_student[s], P_teacher[t])          attention probability rows, same pairs

Padding positions take no part in any term, so a loss does not depend on how a batch was padded. `W` is a
linear projection from the student's width to the teacher's (present only when they differ); it is attached to
the student as the submodule `dtb_distill_projection` so that the optimizer, distributed data parallel and
checkpoints treat it like any other student parameter, and removed from the exported model.

The teacher is a plain (unpatched) Hugging Face model in eval mode, run without gradients; for the attention term
it is loaded with eager attention so that it returns its attention probabilities. The student runs at full length;
its attention probabilities are recomputed from its per-layer inputs (the dynamic encoder does not return them).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dtb_ext.train.trainer import QATrainer

PROJECTION_ATTRIBUTE = "dtb_distill_projection"


@dataclass(frozen=True)
class DistillSettings:
    """Weights of the distillation terms; `layer_map` pairs 0-based (student layer, teacher layer)."""

    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    layer_map: tuple[tuple[int, int], ...] | None = None  # None: spread the student's layers evenly over the teacher's

    def __post_init__(self) -> None:
        temperature = self.temperature
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"kd temperature must be a finite number > 0, got {self.temperature!r}")
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise ValueError("kd alpha (weight of the soft loss, the hard loss gets 1 - alpha) must lie in [0, 1], "
                             f"got {self.alpha!r}")
        for name in ("hidden_weight", "attention_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"kd {name.replace('_', ' ')} must be a finite number >= 0, got {value!r}")
        if self.layer_map is not None and not self.uses_layers:
            raise ValueError("a kd layer map only matters with a hidden-state or attention weight > 0; both are 0")

    @property
    def uses_layers(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0


def parse_layer_map(text: str) -> tuple[tuple[int, int], ...]:
    """"0:1,1:3" -> ((0, 1), (1, 3)): comma-separated student:teacher pairs of 0-based layer indices."""
    pairs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            pairs.append((int(parts[0]), int(parts[1])))
        except ValueError:
            raise ValueError(f"a kd layer map is comma-separated student:teacher layer pairs such as 0:1,1:3; "
                             f"got {text!r} (bad item {item!r})") from None
    return tuple(pairs)


def default_layer_map(student_layers: int, teacher_layers: int) -> tuple[tuple[int, int], ...]:
    """Student layer s learns from teacher layer ceil((s + 1) * teacher_layers / student_layers) - 1 (TinyBERT's
    uniform map: 2 student, 4 teacher layers -> 0:1, 1:3; the last layers always pair)."""
    return tuple((s, -(-(s + 1) * teacher_layers // student_layers) - 1) for s in range(student_layers))


def check_layer_map(layer_map: Sequence[tuple[int, int]], student_layers: int, teacher_layers: int) -> None:
    """ValueError unless every pair indexes existing layers and no student layer appears twice."""
    if not layer_map:
        raise ValueError("a kd layer map needs at least one student:teacher pair, got none")
    for student, teacher in layer_map:
        if not 0 <= student < student_layers:
            raise ValueError(f"kd layer map pair {student}:{teacher}: the student has layers 0..{student_layers - 1}")
        if not 0 <= teacher < teacher_layers:
            raise ValueError(f"kd layer map pair {student}:{teacher}: the teacher has layers 0..{teacher_layers - 1}")
    students = [student for student, _ in layer_map]
    repeated = sorted({student for student in students if students.count(student) > 1})
    if repeated:
        raise ValueError("kd layer map: each student layer may learn from one teacher layer, got student layers "
                         f"{repeated} twice")


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor,
                       temperature: float = 1.0) -> Tensor:
    """Mean over examples of -sum_k p_teacher[k] log p_student[k], both softmaxes at `temperature`, over the
    positions where `mask` is True. No gradient flows into the teacher's side (it is the target).

    Args:
        student_logits, teacher_logits: [B, L] scores.
        mask: [B, L] bool, True for real tokens.
    """
    target = masked_softmax(teacher_logits.detach(), mask, temperature)
    return cross_entropy_to(student_logits, target, mask, temperature)


def masked_softmax(logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """float32 softmax of [B, L] `logits / temperature` over the positions where `mask` ([B, L] bool) is True;
    the other positions get 0."""
    blocked = torch.finfo(torch.float32).min  # in float32 whatever the logits' dtype (mixed precision)
    return torch.softmax(logits.float().masked_fill(~mask, blocked) / temperature, dim=-1)


def cross_entropy_to(student_logits: Tensor, target: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over examples of -sum_k target[k] log softmax(student_logits / temperature)[k], over the positions
    where `mask` is True. `target`: [B, L] probabilities (no gradient is taken through it by the callers)."""
    blocked = torch.finfo(torch.float32).min
    student_log_probs = torch.log_softmax(student_logits.float().masked_fill(~mask, blocked) / temperature, dim=-1)
    # where(), not a product: a padding position holds 0 * (a huge negative log-probability)
    per_token = torch.where(mask, target * student_log_probs, torch.zeros((), device=mask.device))
    return -per_token.sum(dim=-1).mean()


def span_soft_cross_entropy(student: Any, teacher: Any, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """soft_cross_entropy averaged over the start and end logits of two QA outputs ([B, L] each)."""
    start = soft_cross_entropy(student.start_logits, teacher.start_logits, mask, temperature)
    end = soft_cross_entropy(student.end_logits, teacher.end_logits, mask, temperature)
    return (start + end) / 2


def masked_hidden_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the real tokens: [B, L, D] twice, [B, L] bool mask -> scalar."""
    per_token = (student.float() - teacher.float()).pow(2).mean(dim=-1)
    return (per_token * mask).sum() / mask.sum()


def masked_attention_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Squared distance between attention rows, summed over the real keys and averaged over heads and real
    queries: [B, H, L, L] twice, [B, L] mask -> scalar. (Summed over keys, not averaged: a row's probabilities
    are about 1/L each, so a per-entry mean would shrink the term like 1/L^2.)"""
    pairs = (mask[:, :, None] & mask[:, None, :])[:, None]  # [B, 1, L, L]
    squared = (student.float() - teacher.float()).pow(2) * pairs
    return squared.sum() / (mask.sum() * student.shape[1])


def attention_probabilities(layer: nn.Module, hidden: Tensor, mask: Tensor) -> Tensor:
    """A BERT-family layer's self-attention probabilities, recomputed from its input, without dropout.

    Args:
        layer: a BertLayer / RobertaLayer (absolute position embeddings).
        hidden: [B, L, D] the layer's input.
        mask: [B, L] bool, True for real tokens (padding keys get probability 0).

    Returns:
        [B, H, L, L] probabilities, as HF eager attention returns them in eval mode.
    """
    attention = layer.attention.self
    shape = (*hidden.shape[:2], -1, attention.attention_head_size)
    query = attention.query(hidden).view(shape).transpose(1, 2)
    key = attention.key(hidden).view(shape).transpose(1, 2)
    scores = torch.matmul(query, key.transpose(-1, -2)) * attention.scaling
    scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1)


def load_teacher(path: str, with_attentions: bool) -> nn.Module:
    """A span-QA teacher in float32, eval mode, frozen; eager attention when its probabilities are needed."""
    import os

    from transformers import AutoModelForQuestionAnswering

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"--teacher expects a question-answering model directory with a config.json, got {path!r}")
    extra = {"attn_implementation": "eager"} if with_attentions else {}
    teacher, loading = AutoModelForQuestionAnswering.from_pretrained(
        path, dtype=torch.float32, output_loading_info=True, **extra
    )
    untrained = sorted(key for key in loading["missing_keys"] if key.startswith("qa_outputs"))
    if untrained:
        raise ValueError(f"teacher {path} is not a trained question-answering model: {', '.join(untrained)} missing")
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    return getattr(model, model.base_model_prefix).encoder.layer


class Distiller:
    """The distillation loss of a student against one teacher (see the module docstring for the terms).

    Construction checks that the two models fit together (vocabulary, layer map, heads for the attention term)
    and attaches the width projection to the student when the hidden-state term needs one (unless it has one).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, settings: DistillSettings) -> None:
        self.teacher = teacher
        self.settings = settings
        student_config, teacher_config = student.config, teacher.config
        if student_config.vocab_size != teacher_config.vocab_size:
            raise ValueError(f"teacher and student must share a vocabulary (the same token ids): teacher vocab_size "
                             f"{teacher_config.vocab_size}, student vocab_size {student_config.vocab_size}")
        self.layer_map: tuple[tuple[int, int], ...] = ()
        if settings.uses_layers:
            student_layers, teacher_layers = len(_encoder_layers(student)), len(_encoder_layers(teacher))
            self.layer_map = settings.layer_map or default_layer_map(student_layers, teacher_layers)
            check_layer_map(self.layer_map, student_layers, teacher_layers)
        if settings.attention_weight > 0 and student_config.num_attention_heads != teacher_config.num_attention_heads:
            raise ValueError("the attention term compares head by head: teacher has "
                             f"{teacher_config.num_attention_heads} "
                             f"heads, student {student_config.num_attention_heads}; set the kd attention weight to 0")
        if settings.hidden_weight > 0 and student_config.hidden_size != teacher_config.hidden_size:
            widths = (student_config.hidden_size, teacher_config.hidden_size)
            existing = getattr(student, PROJECTION_ATTRIBUTE, None)
            if existing is None or (existing.in_features, existing.out_features) != widths:
                # a student that already carries a fitting projection (a second distiller) keeps it
                projection = nn.Linear(*widths)
                student.add_module(PROJECTION_ATTRIBUTE, projection.to(next(student.parameters()).device))

    def loss(self, student: nn.Module, inputs: dict[str, Tensor]) -> tuple[Tensor, Any, dict[str, Tensor]]:
        """(total loss, student outputs, {term name: detached value}) for one batch.

        Args:
            student: the (possibly DDP-wrapped) student, called at whatever length configuration is active.
            inputs: input_ids / token_type_ids / attention_mask [B, L] and start_positions / end_positions [B].
        """
        settings = self.settings
        need_hidden = settings.uses_layers
        features = {name: value for name, value in inputs.items() if name not in ("start_positions", "end_positions")}
        mask = inputs["attention_mask"].bool()
        teacher_device = next(self.teacher.parameters()).device
        if teacher_device != mask.device:
            self.teacher.to(mask.device)
        with torch.no_grad():
            teacher_out = self.teacher(**features, output_hidden_states=need_hidden,
                                       output_attentions=settings.attention_weight > 0)
        student_out = student(**inputs, output_hidden_states=need_hidden)
        soft = span_soft_cross_entropy(student_out, teacher_out, mask, settings.temperature) * settings.temperature ** 2
        parts = {"kd_soft": soft, "hard": student_out.loss}
        total = settings.alpha * soft + (1 - settings.alpha) * student_out.loss
        if settings.hidden_weight > 0:
            hidden = self._hidden_loss(student, student_out.hidden_states, teacher_out.hidden_states, mask)
            parts["kd_hidden"] = hidden
            total = total + settings.hidden_weight * hidden
        if settings.attention_weight > 0:
            attention = self._attention_loss(student, student_out.hidden_states, teacher_out.attentions, mask)
            parts["kd_attention"] = attention
            total = total + settings.attention_weight * attention
        return total, student_out, {name: value.detach() for name, value in parts.items()}

    def _hidden_loss(self, student: nn.Module, student_states, teacher_states, mask: Tensor) -> Tensor:
        # hidden_states[0] is the embedding output, so layer i's output is hidden_states[i + 1]
        projection = getattr(unwrap_model(student), PROJECTION_ATTRIBUTE, None)
        terms = []
        for s, t in self.layer_map:
            projected = student_states[s + 1] if projection is None else projection(student_states[s + 1])
            terms.append(masked_hidden_mse(projected, teacher_states[t + 1], mask))
        return torch.stack(terms).mean()

    def _attention_loss(self, student: nn.Module, student_states, teacher_attentions, mask: Tensor) -> Tensor:
        layers = _encoder_layers(unwrap_model(student))
        terms = [
            masked_attention_mse(attention_probabilities(layers[s], student_states[s], mask), teacher_attentions[t],
                                 mask)
            for s, t in self.layer_map
        ]
        return torch.stack(terms).mean()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class DistillationTrainer(QATrainer):
    """QATrainer whose loss is the distiller's (or, with none, the model's own). Logs the loss terms' means next
    to the loss; the exported model leaves out the width projection."""

    def __init__(self, *args: Any, distiller: Distiller | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if distiller is not None and self.loss_fn is not None:
            raise ValueError("give either a distiller or a custom loss_fn, not both")
        self.distiller = distiller
        self.loss_is_scaled_for_ga = False  # every loss here is a per-batch mean
        self._part_sums: dict[str, list[Any]] = {}

    def full_model_loss(self, model: nn.Module, inputs: dict[str, Tensor]) -> tuple[Tensor, Any]:
        """(loss, outputs) of the model at its active length configuration: distillation, custom or own loss."""
        if self.distiller is not None:
            loss, outputs, parts = self.distiller.loss(model, inputs)
            self.record_parts(parts)
            return loss, outputs
        if self.loss_fn is not None:
            return self.loss_fn(model, inputs)
        outputs = model(**inputs)
        return outputs.loss, outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.full_model_loss(model, inputs)
        return (loss, outputs) if return_outputs else loss

    def record_parts(self, parts: dict[str, Tensor]) -> None:
        """Add loss terms to the running means that the next training log reports."""
        if not self.model.training:
            return
        for name, value in parts.items():
            total = self._part_sums.setdefault(name, [0.0, 0])
            total[0] = total[0] + value.detach()  # a tensor sum: no device synchronisation until the log
            total[1] += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._part_sums:
            parts = {name: round(float(total) / count, 6) for name, (total, count) in self._part_sums.items()}
            logs = {**logs, **parts}
            self._part_sums = {}
        super().log(logs, start_time)

    def model_for_export(self) -> nn.Module:
        model = self.model
        if not hasattr(model, PROJECTION_ATTRIBUTE):
            return model
        exported = copy.deepcopy(model)
        delattr(exported, PROJECTION_ATTRIBUTE)
        return exported
