"""From start/end logits to one answer text per question: the best span over all windows of a question."""
from __future__ import annotations

import numpy as np
import torch

from dtb_ext.qa.features import EvalFeatures

N_BEST = 20
MAX_ANSWER_TOKENS = 30


def best_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    context_start: torch.Tensor,
    context_length: torch.Tensor,
    n_best: int = N_BEST,
    max_answer_tokens: int = MAX_ANSWER_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best span of each feature among its `n_best` start and `n_best` end candidates.

    start_logits, end_logits: (B, T); context_start, context_length: (B,) give the context tokens
    [context_start, context_start + context_length) of each row; only those can start or end an answer.
    A span is valid when start <= end and it has at most `max_answer_tokens` tokens.
    Returns (score (B,), start (B,), end (B,)) with token positions in the feature; score is -inf where no
    valid span exists."""
    positions = torch.arange(start_logits.shape[1], device=start_logits.device)
    in_context = (positions >= context_start[:, None]) & (positions < (context_start + context_length)[:, None])
    minus_inf = torch.tensor(float("-inf"), dtype=torch.float32, device=start_logits.device)
    start_scores = torch.where(in_context, start_logits.float(), minus_inf)
    end_scores = torch.where(in_context, end_logits.float(), minus_inf)
    k = min(n_best, start_logits.shape[1])
    top_start, start_index = start_scores.topk(k, dim=1)  # (B, k), sorted descending, ties to lower index
    top_end, end_index = end_scores.topk(k, dim=1)
    span_length = end_index[:, None, :] - start_index[:, :, None] + 1  # (B, k, k)
    valid = (span_length >= 1) & (span_length <= max_answer_tokens)
    pair_scores = torch.where(valid, top_start[:, :, None] + top_end[:, None, :], minus_inf)
    best = pair_scores.flatten(1).argmax(dim=1)
    score = pair_scores.flatten(1).gather(1, best[:, None]).squeeze(1)
    start = start_index.gather(1, (best // k)[:, None]).squeeze(1)
    end = end_index.gather(1, (best % k)[:, None]).squeeze(1)
    return score, start, end


class SpanCollector:
    """Keeps, per question, the best-scoring span seen over its windows, then turns it into answer text."""

    def __init__(self, features: EvalFeatures) -> None:
        self.features = features
        n = len(features.examples)
        self.score = np.full(n, -np.inf)
        self.first_token = np.zeros(n, dtype=np.int64)  # index among the example's context tokens
        self.last_token = np.zeros(n, dtype=np.int64)

    def add(self, feature_indices: np.ndarray, start_logits: torch.Tensor, end_logits: torch.Tensor) -> None:
        """Feed one batch: feature_indices (B,), logits (B, T) as returned by the model for that batch."""
        f = self.features
        context_start = torch.from_numpy(f.context_start[feature_indices])
        window_length = torch.from_numpy(f.window_length[feature_indices])
        score, start, end = best_spans(start_logits, end_logits, context_start, window_length)
        to_context = torch.from_numpy(f.window_start[feature_indices]) - context_start
        first, last = (start + to_context).numpy(), (end + to_context).numpy()
        for row, feature in enumerate(feature_indices):
            e = f.example_index[feature]
            if score[row] > self.score[e]:
                self.score[e], self.first_token[e], self.last_token[e] = float(score[row]), first[row], last[row]

    def predictions(self) -> dict[str, str]:
        """qid -> answer text cut from the context by character offsets; questions without any valid span
        (skipped in featurisation) are left out, so the metric scores them 0."""
        answers = {}
        for e, example in enumerate(self.features.examples):
            if np.isfinite(self.score[e]):
                offsets = self.features.context_offsets[e]
                answers[example.qid] = example.context[offsets[self.first_token[e], 0]:offsets[self.last_token[e], 1]]
        return answers
