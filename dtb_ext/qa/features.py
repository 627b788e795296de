"""SQuAD features: the sliding window over long contexts, for evaluation and for training.

Each question becomes one or more features `[CLS] question [SEP] context-window [SEP]`. Windows follow the
original BERT recipe: a window holds at most `max_seq_length - len(question) - 3` context tokens and the next
window starts `doc_stride` tokens after the previous one, so consecutive windows overlap and together cover the
whole context. The fast tokenizer's character offsets of the context tokens are kept, so a token span maps back
to the exact characters of the context.

Contexts and questions are tokenised separately (once per distinct context) and assembled here; for BERT's
WordPiece this gives the same tokens as tokenising the pair, and it lets every question be checked (empty
context, over-long question, answer not at answer_start) before any window is built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from dtb_ext.qa.data import SkipCounts, SquadExample

PADDING_MODES = ("dynamic", "max_length")


@dataclass
class _Tokenised:
    """One example's question tokens and its context tokens with character offsets (n_context, 2)."""

    question_ids: list[int]
    context_ids: list[int]
    context_offsets: np.ndarray


@dataclass
class EvalFeatures:
    """Tokenised evaluation windows of a list of questions, kept in memory and reused across evaluations.

    Per feature f (all arrays have length n_features):
      input_ids[f]            int64 array (length_f,): unpadded `[CLS] q [SEP] window [SEP]`
      example_index[f]        which entry of `examples` it belongs to
      context_start[f]        token position of the window's first context token inside the feature
      window_start[f]         index of that token among the example's context tokens
      window_length[f]        number of context tokens in the window
    context_offsets[e]: (n_context_tokens, 2) character offsets of example e's context tokens.
    Questions that could not be featurised stay in `examples` (they score 0) and are counted in `skips`.
    """

    examples: list[SquadExample]
    input_ids: list[np.ndarray]
    example_index: np.ndarray
    context_start: np.ndarray
    window_start: np.ndarray
    window_length: np.ndarray
    context_offsets: list[np.ndarray]
    pad_token_id: int
    max_seq_length: int
    skips: SkipCounts = field(default_factory=SkipCounts)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """Unpadded length of every feature, (n_features,)."""
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def spread_by_length(self, count: int) -> EvalFeatures:
        """`count` features evenly spaced over the features sorted by length (short to long, ties by index), kept
        in their own order: a fixed subset that spans short and long ones, to time a model on."""
        n = len(self)
        if not 1 <= count <= n:
            raise ValueError(f"a subset of 1 to {n} features can be spread by length, {count} were asked")
        by_length = np.lexsort((np.arange(n), self.lengths))
        picks = np.sort(by_length[np.linspace(0, n - 1, count).round().astype(int)])
        return dataclasses.replace(
            self,
            input_ids=[self.input_ids[i] for i in picks],
            example_index=self.example_index[picks],
            context_start=self.context_start[picks],
            window_start=self.window_start[picks],
            window_length=self.window_length[picks],
        )

    def batches(
        self, batch_size: int, padding: str = "dynamic"
    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Yield (feature indices (B,), model inputs) with input_ids/attention_mask/token_type_ids of shape (B, T).

        Features are ordered by length (longest first, ties by index) so each batch holds similar lengths; with
        padding="dynamic" T is the batch's longest feature, with "max_length" T is max_seq_length (the paper's
        protocol). The order is fixed, so evaluations are deterministic."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
        lengths = self.lengths
        order = np.lexsort((np.arange(len(lengths)), -lengths))
        for begin in range(0, len(order), batch_size):
            indices = order[begin:begin + batch_size]
            width = int(lengths[indices].max()) if padding == "dynamic" else self.max_seq_length
            yield indices, self._collate(indices, width)

    def _collate(self, indices: np.ndarray, width: int) -> dict[str, torch.Tensor]:
        input_ids = torch.full((len(indices), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
        token_type_ids = torch.zeros((len(indices), width), dtype=torch.long)
        for row, f in enumerate(indices):
            ids = self.input_ids[f]
            input_ids[row, :len(ids)] = torch.from_numpy(ids)
            attention_mask[row, :len(ids)] = 1
            token_type_ids[row, self.context_start[f]:len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def _check_window_arguments(tokenizer, max_seq_length: int, doc_stride: int, max_query_length: int) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"a fast tokenizer (with offset mapping) is needed, got {type(tokenizer).__name__}")
    arguments = (("max_seq_length", max_seq_length), ("doc_stride", doc_stride), ("max_query_length", max_query_length))
    for name, value in arguments:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_seq_length < max_query_length + 4:
        raise ValueError(
            f"max_seq_length ({max_seq_length}) must leave room for a question of max_query_length "
            f"({max_query_length}) tokens, 3 special tokens and at least one context token"
        )


def _tokenise(
    examples: Sequence[SquadExample], tokenizer, max_query_length: int, skips: SkipCounts
) -> list[_Tokenised | None]:
    """Tokenise every question and each distinct context once; None marks a skipped example (counted)."""
    distinct_contexts = list(dict.fromkeys(example.context for example in examples))
    # verbose=False: contexts longer than the model's 512 positions are expected here; windows cut them later
    context_encoding = tokenizer(
        distinct_contexts, add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    by_context = {
        context: (ids, np.asarray(offsets, dtype=np.int64).reshape(-1, 2))
        for context, ids, offsets in zip(
            distinct_contexts, context_encoding["input_ids"], context_encoding["offset_mapping"]
        )
    }
    question_ids = tokenizer([example.question for example in examples], add_special_tokens=False)["input_ids"]
    tokenised: list[_Tokenised | None] = []
    for example, q_ids in zip(examples, question_ids):
        c_ids, offsets = by_context[example.context]
        if not c_ids:
            skips.add("context has no tokens")
            tokenised.append(None)
        elif not q_ids:
            skips.add("question has no tokens")
            tokenised.append(None)
        elif len(q_ids) > max_query_length:
            skips.add(f"question longer than max_query_length={max_query_length} tokens")
            tokenised.append(None)
        else:
            tokenised.append(_Tokenised(q_ids, c_ids, offsets))
    return tokenised


def _windows(n_context: int, room: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of the context windows: at most `room` tokens each, starts `doc_stride` apart, the last
    one ending at the context's end."""
    windows, start = [], 0
    while True:
        length = min(room, n_context - start)
        windows.append((start, length))
        if start + length >= n_context:
            return windows
        start += min(length, doc_stride)


def _assemble(tokenizer, question_ids: list[int], context_ids: list[int], start: int, length: int) -> np.ndarray:
    return np.asarray(
        [tokenizer.cls_token_id, *question_ids, tokenizer.sep_token_id, *context_ids[start:start + length],
         tokenizer.sep_token_id],
        dtype=np.int64,
    )


def prepare_eval_features(
    examples: Sequence[SquadExample],
    tokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
) -> EvalFeatures:
    """Tokenise questions into sliding-window features for `evaluate_qa` (done once, reused across configs).

    Questions whose question exceeds `max_query_length` tokens, or whose context has no tokens, are skipped,
    counted in `features.skips` and logged; they remain in `features.examples`, where they score 0."""
    _check_window_arguments(tokenizer, max_seq_length, doc_stride, max_query_length)
    examples = list(examples)
    skips = SkipCounts()
    tokenised = _tokenise(examples, tokenizer, max_query_length, skips)
    input_ids, example_index, context_start, window_start, window_length = [], [], [], [], []
    context_offsets: list[np.ndarray] = []
    for e, item in enumerate(tokenised):
        context_offsets.append(item.context_offsets if item is not None else np.zeros((0, 2), dtype=np.int64))
        if item is None:
            continue
        room = max_seq_length - len(item.question_ids) - 3
        for start, length in _windows(len(item.context_ids), room, doc_stride):
            input_ids.append(_assemble(tokenizer, item.question_ids, item.context_ids, start, length))
            example_index.append(e)
            context_start.append(len(item.question_ids) + 2)
            window_start.append(start)
            window_length.append(length)
    skips.report("prepare_eval_features")
    return EvalFeatures(
        examples=examples,
        input_ids=input_ids,
        example_index=np.asarray(example_index, dtype=np.int64),
        context_start=np.asarray(context_start, dtype=np.int64),
        window_start=np.asarray(window_start, dtype=np.int64),
        window_length=np.asarray(window_length, dtype=np.int64),
        context_offsets=context_offsets,
        pad_token_id=int(tokenizer.pad_token_id),
        max_seq_length=max_seq_length,
        skips=skips,
    )


def answer_token_span(offsets: np.ndarray, char_start: int, char_end: int) -> tuple[int, int] | None:
    """Context-token span [first, last] covering characters [char_start, char_end), or None when no token
    overlaps them. offsets: (n_tokens, 2) ascending character offsets."""
    first = int(np.searchsorted(offsets[:, 1], char_start, side="right"))
    last = int(np.searchsorted(offsets[:, 0], char_end, side="left")) - 1
    if first >= len(offsets) or last < first:
        return None
    return first, last


def prepare_train_features(
    examples: Sequence[SquadExample],
    tokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    strict: bool = False,
) -> tuple[list[dict[str, list[int] | int]], SkipCounts]:
    """Training features with start/end token labels, unpadded (the collator pads each batch).

    Each feature is {"input_ids", "token_type_ids", "attention_mask": list[int] (length_f,),
    "start_positions", "end_positions": int}. The label is the first answer's token span when the window holds
    the whole answer, else the CLS index 0 (the standard way). A question whose answer text is not found at its
    answer_start raises ValueError with strict=True; otherwise it is skipped and counted, like over-long
    questions and empty contexts. Returns (features, skip counts)."""
    _check_window_arguments(tokenizer, max_seq_length, doc_stride, max_query_length)
    examples = list(examples)
    skips = SkipCounts()
    tokenised = _tokenise(examples, tokenizer, max_query_length, skips)
    features: list[dict[str, list[int] | int]] = []
    for example, item in zip(examples, tokenised):
        if item is None:
            continue
        if not example.answers:
            skips.add("no answer")
            continue
        char_start = example.answer_starts[0]
        char_end = char_start + len(example.answers[0])
        if example.context[char_start:char_end] != example.answers[0] or not example.answers[0].strip():
            if strict:
                raise ValueError(
                    f"question {example.qid}: answer {example.answers[0]!r} not found at answer_start {char_start}; "
                    f"the context there reads {example.context[char_start:char_end]!r}"
                )
            skips.add("answer not at answer_start")
            continue
        span = answer_token_span(item.context_offsets, char_start, char_end)
        if span is None:
            skips.add("answer has no tokens")
            continue
        offset = len(item.question_ids) + 2
        room = max_seq_length - len(item.question_ids) - 3
        for start, length in _windows(len(item.context_ids), room, doc_stride):
            ids = _assemble(tokenizer, item.question_ids, item.context_ids, start, length).tolist()
            inside = start <= span[0] and span[1] < start + length
            features.append({
                "input_ids": ids,
                "token_type_ids": [0] * offset + [1] * (len(ids) - offset),
                "attention_mask": [1] * len(ids),
                "start_positions": offset + span[0] - start if inside else 0,
                "end_positions": offset + span[1] - start if inside else 0,
            })
    skips.report("prepare_train_features")
    return features, skips
