"""evaluate_qa end to end: an oracle model scores 100, results do not depend on padding, length configurations
are applied through dtb_ext.length_config, and the model is left as it was found."""
import os

import pytest
import torch
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from dtb_ext.qa import evaluate_qa, load_squad, prepare_eval_features, prepare_train_features
from dtb_ext.qa.data import default_squad_file
from dtb_ext.qa.features import answer_token_span
from tiny_qa import tiny_qa_model

DEV_A = default_squad_file("dev-a-v1.1.json")
needs_data = pytest.mark.skipif(not os.path.isfile(DEV_A), reason="shared SQuAD data not found at ../shared/data/squad")


@pytest.fixture(scope="module")
def examples():
    if not os.path.isfile(DEV_A):
        pytest.skip("shared SQuAD data not found")
    return load_squad(DEV_A)[:40]


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    # a wide initialisation, so that the layers (and dropping tokens in them) visibly move the logits
    return tiny_qa_model(tokenizer.vocab_size, initializer_range=0.5)


class OracleModel(torch.nn.Module):
    """Puts the highest logits on the labelled answer tokens of each window (looked up by its input ids)."""

    def __init__(self, labels):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.labels = labels

    def forward(self, input_ids, attention_mask, token_type_ids):
        start = torch.zeros(input_ids.shape)
        end = torch.zeros(input_ids.shape)
        for row, ids in enumerate(input_ids):
            s, e = self.labels[tuple(ids[: int(attention_mask[row].sum())].tolist())]
            if s:
                start[row, s] = end[row, e] = 10.0
        return QuestionAnsweringModelOutput(start_logits=start, end_logits=end)


def test_oracle_spans_are_recovered_exactly(tokenizer, examples):
    train_features, skips = prepare_train_features(examples, tokenizer, max_seq_length=128, doc_stride=64)
    assert skips.total == 0
    labels = {tuple(f["input_ids"]): (f["start_positions"], f["end_positions"]) for f in train_features}
    features = prepare_eval_features(examples, tokenizer, max_seq_length=128, doc_stride=64)
    assert len(features) > len(examples)  # several windows per question
    result = evaluate_qa(OracleModel(labels), features, batch_size=7, progress=False, return_predictions=True)
    assert result["n"] == 40 and result["seconds"] > 0
    for example in examples:
        # the prediction is the answer widened to whole WordPiece tokens ("gold" inside "golden" gives "golden")
        offsets = features.context_offsets[features.examples.index(example)]
        first, last = answer_token_span(
            offsets, example.answer_starts[0], example.answer_starts[0] + len(example.answers[0])
        )
        assert result["predictions"][example.qid] == example.context[offsets[first, 0]:offsets[last, 1]]
    assert result["exact_match"] >= 90.0


def test_padding_does_not_change_predictions(tokenizer, examples, tiny_model):
    features = prepare_eval_features(examples, tokenizer)
    dynamic = evaluate_qa(tiny_model, features, batch_size=8, padding="dynamic", progress=False,
                          return_predictions=True)
    padded = evaluate_qa(tiny_model, features, batch_size=8, padding="max_length", progress=False,
                         return_predictions=True)
    single = evaluate_qa(tiny_model, features, batch_size=1, progress=False, return_predictions=True)
    assert dynamic["predictions"] == padded["predictions"] == single["predictions"]
    again = evaluate_qa(tiny_model, features, batch_size=8, progress=False, return_predictions=True)
    assert again["predictions"] == dynamic["predictions"]  # deterministic


def test_length_config_is_applied_and_full_length_matches_unpatched(tokenizer, examples, tiny_model):
    import copy

    import dtb_ext

    features = prepare_eval_features(examples[:12], tokenizer)
    plain = evaluate_qa(tiny_model, features, progress=False, return_predictions=True)
    model = copy.deepcopy(tiny_model)
    full = evaluate_qa(model, features, length_config=[384, 384], progress=False, return_predictions=True)
    assert dtb_ext.is_patched(model)  # patched on demand
    assert full["predictions"] == plain["predictions"]
    short = evaluate_qa(model, features, length_config=[8, 4], progress=False, return_predictions=True)
    assert short["predictions"] != plain["predictions"]
    ratios = evaluate_qa(model, features, length_config=dtb_ext.LengthConfig.ratios([0.5, 0.25]), progress=False)
    assert ratios["n"] == 12
    with pytest.raises(ValueError):
        evaluate_qa(model, features, length_config=[300], progress=False)


def test_skipped_questions_count_as_misses(tokenizer, examples):
    from dataclasses import replace

    long_question = replace(examples[0], question="why " * 80)
    features = prepare_eval_features([long_question, examples[1]], tokenizer)
    train_features, _ = prepare_train_features([examples[1]], tokenizer)
    labels = {tuple(f["input_ids"]): (f["start_positions"], f["end_positions"]) for f in train_features}
    result = evaluate_qa(OracleModel(labels), features, progress=False)
    assert result["n"] == 2 and result["exact_match"] == 50.0


def test_training_mode_is_restored(tokenizer, examples, tiny_model):
    features = prepare_eval_features(examples[:2], tokenizer)
    tiny_model.train()
    try:
        evaluate_qa(tiny_model, features, progress=False)
        assert tiny_model.training
    finally:
        tiny_model.eval()
