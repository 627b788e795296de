"""Sliding-window features and span post-processing: windows cover the context, labels and predicted spans
map back to the exact answer characters, bad questions are skipped and counted."""
import os

import numpy as np
import pytest
import torch

from dtb_ext.qa.data import SquadExample, default_squad_file, load_squad
from dtb_ext.qa.features import answer_token_span, prepare_eval_features, prepare_train_features
from dtb_ext.qa.postprocess import SpanCollector, best_spans

TRAIN = default_squad_file("train-subset-v1.1.json")
needs_data = pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found at ../shared/data/squad")


LONG_CONTEXT = " ".join(f"word{i} is followed by number {i}." for i in range(120))


def _example(qid="q", context=LONG_CONTEXT, question="Which number follows word57?", answer="57", start=None):
    start = context.index(f"number {answer}.") + len("number ") if start is None else start
    return SquadExample(qid, "T", context, question, (answer,), (start,))


def test_windows_cover_the_whole_context_with_doc_stride_steps(tokenizer):
    example = _example()
    features = prepare_eval_features([example], tokenizer, max_seq_length=64, doc_stride=16, max_query_length=20)
    n_context = len(features.context_offsets[0])
    assert len(features) > 3 and n_context > 64
    starts, lengths = features.window_start, features.window_length
    assert starts[0] == 0 and starts[-1] + lengths[-1] == n_context
    assert np.all(np.diff(starts) == 16)
    covered = np.zeros(n_context, dtype=bool)
    for f in range(len(features)):
        ids = features.input_ids[f]
        assert len(ids) <= 64
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert ids[features.context_start[f] - 1] == tokenizer.sep_token_id
        covered[starts[f]:starts[f] + lengths[f]] = True
    assert covered.all()


def test_feature_tokens_match_tokenising_the_pair(tokenizer):
    example = _example(context="Short context, with punctuation: fine.", answer="fine", start=32)
    features = prepare_eval_features([example], tokenizer)
    pair = tokenizer(example.question, example.context)["input_ids"]
    assert features.input_ids[0].tolist() == pair


def test_train_labels_map_back_to_the_answer_characters(tokenizer):
    example = _example()
    features, skips = prepare_train_features(
        [example], tokenizer, max_seq_length=64, doc_stride=16, max_query_length=20
    )
    assert skips.total == 0
    eval_features = prepare_eval_features([example], tokenizer, max_seq_length=64, doc_stride=16, max_query_length=20)
    offsets = eval_features.context_offsets[0]
    labelled = 0
    for f, feature in enumerate(features):
        assert feature["input_ids"] == eval_features.input_ids[f].tolist()
        assert len(feature["token_type_ids"]) == len(feature["input_ids"]) == len(feature["attention_mask"])
        start, end = feature["start_positions"], feature["end_positions"]
        if start == 0:
            assert end == 0  # answer outside this window: CLS
            continue
        labelled += 1
        shift = eval_features.window_start[f] - eval_features.context_start[f]
        text = example.context[offsets[start + shift, 0]:offsets[end + shift, 1]]
        assert text == "57"
    assert labelled >= 2  # the overlapping windows each hold the answer


@needs_data
def test_answers_of_real_questions_map_back_exactly(tokenizer):
    examples = load_squad(TRAIN)[:400]
    features, skips = prepare_train_features(examples, tokenizer)
    assert skips.total == 0
    exact = 0
    for example in examples:
        offsets = np.asarray(
            tokenizer(example.context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        )
        start = example.answer_starts[0]
        first, last = answer_token_span(offsets, start, start + len(example.answers[0]))
        text = example.context[offsets[first, 0]:offsets[last, 1]]
        assert example.answers[0] in text  # the token span always covers the answer
        exact += text == example.answers[0]
    # the rest are answers cut inside a word ("1990" of "1990s"): WordPiece cannot end there
    assert exact >= 0.97 * len(examples)


def test_answer_not_at_answer_start_is_skipped_or_raises(tokenizer):
    good = _example("good")
    wrong = _example("wrong", start=3)
    features, skips = prepare_train_features([good, wrong], tokenizer)
    assert skips.counts == {"answer not at answer_start": 1}
    assert features == prepare_train_features([good], tokenizer)[0]
    with pytest.raises(ValueError, match="question wrong: answer '57' not found at answer_start 3"):
        prepare_train_features([good, wrong], tokenizer, strict=True)


def test_over_long_questions_and_tokenless_contexts_are_skipped_and_counted(tokenizer, caplog):
    long_question = _example("long", question="why " * 70)
    no_tokens = SquadExample("blank", "T", "\u200b\u200b", "What?", ("x",), (0,))
    with caplog.at_level("WARNING"):
        features = prepare_eval_features([_example("ok"), long_question, no_tokens], tokenizer)
    assert set(features.example_index.tolist()) == {0}
    assert features.skips.counts == {"question longer than max_query_length=64 tokens": 1, "context has no tokens": 1}
    assert "prepare_eval_features: skipped 2 question(s)" in caplog.text
    assert len(features.examples) == 3  # still scored (as 0)
    train, skips = prepare_train_features([long_question], tokenizer)
    assert train == [] and skips.total == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_seq_length": 60, "max_query_length": 64}, "must leave room"),
        ({"doc_stride": 0}, "doc_stride must be a positive integer"),
        ({"max_query_length": -1}, "max_query_length must be a positive integer"),
    ],
)
def test_bad_window_arguments(tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare_eval_features([_example()], tokenizer, **kwargs)


def test_batches_group_by_length_and_pad(tokenizer):
    examples = [_example(str(i), context=LONG_CONTEXT[: 40 + 60 * i], answer="0") for i in range(6)]
    features = prepare_eval_features(examples, tokenizer)
    seen = []
    for indices, inputs in features.batches(2, "dynamic"):
        lengths = features.lengths[indices]
        assert inputs["input_ids"].shape == (len(indices), lengths.max())
        assert inputs["attention_mask"].sum(1).tolist() == lengths.tolist()
        seen.extend(indices.tolist())
    assert sorted(seen) == list(range(len(features)))
    assert list(features.lengths[seen]) == sorted(features.lengths, reverse=True)
    for _, inputs in features.batches(4, "max_length"):
        assert inputs["input_ids"].shape[1] == 384
    with pytest.raises(ValueError, match="padding must be one of"):
        next(features.batches(2, "longest"))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        next(features.batches(0))


def test_best_spans_respects_order_length_and_context():
    start = torch.full((1, 50), -5.0)
    end = torch.full((1, 50), -5.0)
    start[0, 2], end[0, 3] = 100.0, 100.0  # best pair, but outside the context
    start[0, 20], end[0, 12] = 9.0, 9.0  # end before start: invalid
    end[0, 44] = 8.5  # 20..44: 25 tokens, valid and best
    start[0, 10], end[0, 45] = 8.0, 8.0  # 10..45: 36 tokens > 30, invalid; 10..12 valid but scores 17
    score, s, e = best_spans(start, end, torch.tensor([5]), torch.tensor([44]))
    assert (s.item(), e.item()) == (20, 44)
    assert score.item() == pytest.approx(17.5)


def test_best_spans_without_a_valid_span_scores_minus_inf():
    logits = torch.zeros(1, 8)
    score, _, _ = best_spans(logits, logits, torch.tensor([3]), torch.tensor([0]))
    assert score.item() == float("-inf")


def test_collector_takes_the_best_window_and_cuts_the_answer_text(tokenizer):
    example = _example()
    features = prepare_eval_features([example], tokenizer, max_seq_length=64, doc_stride=16, max_query_length=20)
    offsets = features.context_offsets[0]
    target = int(np.searchsorted(offsets[:, 0], example.answer_starts[0]))
    collector = SpanCollector(features)
    indices = np.arange(len(features))
    start = torch.zeros(len(features), 64)
    end = torch.zeros(len(features), 64)
    for f in indices:
        local = target - features.window_start[f] + features.context_start[f]
        if features.window_start[f] <= target < features.window_start[f] + features.window_length[f]:
            start[f, local] = end[f, local] = 1.0 + f  # the last window holding it scores highest
    collector.add(indices, start, end)
    assert collector.predictions() == {"q": "57"}
