"""Exported graphs (dtb_ext.graph_export, docs/design.md §2.9): one ONNX / OpenVINO graph per model that serves every
length configuration, equal to the patched PyTorch model (max |logit difference| <= 1e-4 on real tokens) at full
length, under ratio and absolute configurations, in padded and mixed-config batches; ties, batch invariance, the
checks of the runtime wrapper, and int8 on a small SQuAD sample."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch

import dtb_ext
from dtb_ext.config import LengthConfig, MixedLengthConfig
from dtb_ext.graph_export import ExportedQA, export
from tiny_qa import alone, padded_qa_batch, tiny_qa_model

NUM_LAYERS = 4
NUM_LAYERS_DEFAULT = 6  # the default model (MiniLM-L6)
VOCAB = 1000
TOLERANCE = 1e-4
LENGTHS = [30, 17, 25, 40]
CONFIGS = {
    "full": None,
    "ratios-1": LengthConfig.ratios([1.0] * NUM_LAYERS),
    "ratios": LengthConfig.ratios([0.9, 0.7, 0.5, 0.3]),
    "ratios-late": LengthConfig.ratios([1.0, 1.0, 0.55, 0.55]),
    "absolute": [20, 15, 10, 5],
}
MIXED = MixedLengthConfig([None, [12, 10, 8, 2], LengthConfig.ratios([0.5, 0.5, 0.2, 0.1]), [40, 1, 1, 1]])
# the runtime each format needs, and the formats themselves
RUNTIME_MODULES = {"openvino": "openvino", "onnx": "onnxruntime"}


def _patched(significance: str) -> torch.nn.Module:
    """A patched 4-layer tiny QA model selecting by `significance`; a scorer gets random (non-default) weights."""
    model = dtb_ext.patch(tiny_qa_model(VOCAB, num_hidden_layers=NUM_LAYERS))
    if significance != "attention":
        scorer = dtb_ext.add_relevance_scorer(model, significance)
        with torch.no_grad():
            for parameter in scorer.parameters():
                parameter.normal_(0, 1, generator=torch.Generator().manual_seed(3))
    return model


@pytest.fixture(scope="module", params=[("openvino", "attention"), ("onnx", "attention"), ("openvino", "scorer"),
                                        ("onnx", "attention+scorer")], ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request, tmp_path_factory):
    """(patched model, ExportedQA of its fp32 graph)."""
    format, significance = request.param
    pytest.importorskip(RUNTIME_MODULES[format], reason=f"the {format} runtime is not installed")
    model = _patched(significance)
    path = str(tmp_path_factory.mktemp(f"{format}-{significance.replace('+', '-')}"))
    export(model, path, format=format)
    return model, ExportedQA(path)


def _torch_logits(model, inputs, config):
    with torch.inference_mode(), dtb_ext.length_config(model, config):
        output = model(**inputs)
    return output.start_logits, output.end_logits


def _graph_logits(graph, inputs, config):
    return graph(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], config)


def _max_real_difference(got, want, mask) -> float:
    """Largest |difference| of start and end logits over real tokens (padding logits mean nothing)."""
    real = mask.bool()
    return max((g - w)[real].abs().max().item() for g, w in zip(got, want))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_graph_equals_the_patched_model_on_a_padded_batch(exported, name):
    model, graph = exported
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    got = _graph_logits(graph, inputs, CONFIGS[name])
    assert _max_real_difference(got, _torch_logits(model, inputs, CONFIGS[name]), inputs["attention_mask"]) <= TOLERANCE


def test_a_mixed_batch_equals_the_patched_model_and_each_example_alone(exported):
    model, graph = exported
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    got = _graph_logits(graph, inputs, MIXED)
    assert _max_real_difference(got, _torch_logits(model, inputs, MIXED), inputs["attention_mask"]) <= TOLERANCE
    for row, (length, config) in enumerate(zip(LENGTHS, MIXED.configs)):
        single = alone(inputs, row, length)
        by_itself = _graph_logits(graph, single, config)
        assert max((g[row, :length] - s[0]).abs().max().item() for g, s in zip(got, by_itself)) <= TOLERANCE


def test_one_graph_serves_other_lengths_and_batch_sizes(exported):
    model, graph = exported
    for lengths in ([7], [64, 3], [33, 33, 12, 50, 9]):
        inputs = padded_qa_batch(lengths, VOCAB, seed=len(lengths))
        config = CONFIGS["ratios"]
        got = _graph_logits(graph, inputs, config)
        assert _max_real_difference(got, _torch_logits(model, inputs, config), inputs["attention_mask"]) <= TOLERANCE


@pytest.mark.parametrize("format", list(RUNTIME_MODULES))
def test_ratios_one_reproduce_the_unpatched_model(tmp_path, format):
    pytest.importorskip(RUNTIME_MODULES[format], reason=f"the {format} runtime is not installed")
    unpatched = tiny_qa_model(VOCAB, num_hidden_layers=NUM_LAYERS)
    export(dtb_ext.patch(copy.deepcopy(unpatched)), str(tmp_path), format=format)
    graph = ExportedQA(str(tmp_path))
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    with torch.inference_mode():
        output = unpatched(**inputs)
    got = _graph_logits(graph, inputs, LengthConfig.ratios([1.0] * NUM_LAYERS))
    assert _max_real_difference(got, (output.start_logits, output.end_logits), inputs["attention_mask"]) <= TOLERANCE


@pytest.mark.parametrize("format", list(RUNTIME_MODULES))
def test_ties_go_to_the_lower_position(tmp_path, format):
    """A scorer with zero weights ties every token: the graph must keep the first ones, as the PyTorch model does
    (OpenVINO's TopK is unstable unless the export makes it stable)."""
    pytest.importorskip(RUNTIME_MODULES[format], reason=f"the {format} runtime is not installed")
    model = _patched("scorer")
    with torch.no_grad():
        for parameter in dtb_ext.models.patching.dynamic_encoder(model).relevance.parameters():
            parameter.zero_()
    export(model, str(tmp_path), format=format)
    graph = ExportedQA(str(tmp_path))
    inputs = padded_qa_batch([300, 260], VOCAB)
    for config in (LengthConfig.ratios([0.6, 0.5, 0.3, 0.2]), [100, 90, 40, 3]):
        got = _graph_logits(graph, inputs, config)
        assert _max_real_difference(got, _torch_logits(model, inputs, config), inputs["attention_mask"]) <= TOLERANCE


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    path = str(tmp_path_factory.mktemp("tiny-onnx"))
    export(_patched("attention"), path, format="onnx")
    return ExportedQA(path)


@pytest.mark.parametrize("config, message", [
    ([10, 8, 6], "expected 4, got 3"),
    ({"ratios": [1.2, 1.0, 0.5, 0.5]}, r"ratios must lie in \(0, 1\]"),
    ({"ratios": [0.5, 0.6, 0.5, 0.5]}, "non-increasing"),
    ({"ratios": [0.5, 0.5, 0.5, 0.12345]}, "at most 4 decimals"),
    (MixedLengthConfig([None, [4, 3, 2, 1]]), "2 configurations for a batch of 4 examples"),
    ([10, 8, 6, 0], "must be >= 1"),
])
def test_the_wrapper_rejects_configs_that_do_not_fit(tiny_graph, config, message):
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    with pytest.raises(ValueError, match=message):
        _graph_logits(tiny_graph, inputs, config)


def test_the_wrapper_rejects_bad_inputs(tiny_graph):
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    with pytest.raises(ValueError, match="share one"):
        tiny_graph(inputs["input_ids"], inputs["attention_mask"][:, :5], inputs["token_type_ids"])
    empty = inputs["attention_mask"].clone()
    empty[1] = 0
    with pytest.raises(ValueError, match="all-padding row"):
        tiny_graph(inputs["input_ids"], empty, inputs["token_type_ids"])
    with pytest.raises(ValueError, match="not an exported model"):
        ExportedQA(os.path.dirname(__file__))


def test_export_refuses_what_it_cannot_write(tmp_path):
    model = _patched("attention")
    with pytest.raises(ValueError, match="format must be one of"):
        export(model, str(tmp_path), format="tflite")
    with pytest.raises(ValueError, match="ONNX export is fp32"):
        export(model, str(tmp_path), format="onnx", precision="bf16")
    with pytest.raises(ValueError, match="needs calibration_inputs"):
        export(model, str(tmp_path), format="openvino", precision="int8")
    with pytest.raises(ValueError, match="is not patched"):
        export(tiny_qa_model(VOCAB), str(tmp_path))
    with pytest.raises(ValueError, match="float32 CPU model"):
        export(copy.deepcopy(model).to(torch.bfloat16), str(tmp_path))


# --- the default model: a real checkpoint with a relevance scorer -------------------------------------------------

@pytest.fixture(scope="module")
def default_model_export(tmp_path_factory):
    """(patched default model, tokenizer, ExportedQA of its fp32 OpenVINO graph, 40 dev-a questions' features)."""
    pytest.importorskip("openvino", reason="openvino is not installed")
    from dtb_ext.data_paths import DEFAULT_MODEL_DIR, DEV_FILE
    from dtb_ext.qa import load_squad, prepare_eval_features
    from dtb_ext.qa.model import load_qa_model
    from dtb_ext.search.qa_objective import sample_questions

    model, tokenizer = load_qa_model(DEFAULT_MODEL_DIR)
    dtb_ext.patch(model).eval()
    path = str(tmp_path_factory.mktemp("default-openvino"))
    export(model, path, format="openvino")
    features = prepare_eval_features(sample_questions(load_squad(DEV_FILE), 40, 0), tokenizer)
    return model, tokenizer, ExportedQA(path), features


def test_the_default_model_graph_equals_pytorch_at_its_front_pick(default_model_export):
    from dtb_ext.data_paths import DEFAULT_MODEL_DIR

    model, _, graph, features = default_model_export
    pick = dtb_ext.pick(dtb_ext.load_front(os.path.join(DEFAULT_MODEL_DIR, "front.json")), max_f1_drop_percent=1.0)
    indices, inputs = next(iter(features.batches(16)))
    for config in (None, pick.length_config, MixedLengthConfig([pick.length_config, None] * 8)):
        got = _graph_logits(graph, inputs, config)
        assert _max_real_difference(got, _torch_logits(model, inputs, config), inputs["attention_mask"]) <= TOLERANCE


def test_int8_keeps_f1_on_a_small_sample(default_model_export, tmp_path):
    """NNCF int8, calibrated on 32 training windows, against the fp32 graph on 40 dev-a questions (a loose bound:
    40 questions move F1 by a few points either way; `dtb eval --runtime openvino --precision int8` measures it)."""
    pytest.importorskip("nncf", reason="nncf is not installed")
    from dtb_ext.graph_export import evaluate_exported
    from dtb_ext.graph_export.calibration import training_calibration_inputs

    model, tokenizer, graph, features = default_model_export
    calibration = training_calibration_inputs(tokenizer, NUM_LAYERS_DEFAULT, windows=32)
    export(model, str(tmp_path), format="openvino", precision="int8", calibration_inputs=calibration)
    int8 = ExportedQA(str(tmp_path))
    fp32_f1 = evaluate_exported(graph, features, progress=False)["f1"]
    int8_f1 = evaluate_exported(int8, features, progress=False)["f1"]
    assert fp32_f1 > 40, "the default model should answer these questions (else the comparison shows nothing)"
    assert abs(int8_f1 - fp32_f1) <= 5.0


# --- the command line ---------------------------------------------------------------------------------------------

def _eval_predictions(capsys, tmp_path, model_dir, *extra):
    from dtb_ext.cli import main
    from dtb_ext.data_paths import DEV_FILE

    path = tmp_path / f"predictions-{len(list(tmp_path.iterdir()))}.json"
    code = main(["eval", "--data", DEV_FILE, "--model", model_dir, "--limit", "6", "--batch-size", "4",
                 "--length-ratios", "0.8,0.5", "--no-progress", "--predictions", str(path), *extra])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return result, json.loads(path.read_text())


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_dtb_eval_in_a_runtime_answers_as_pytorch(tmp_path, capsys, runtime):
    pytest.importorskip(runtime, reason=f"{runtime} is not installed")
    from tiny_qa import save_tiny_qa_model

    model_dir = save_tiny_qa_model(str(tmp_path / "tiny"))
    torch_result, torch_predictions = _eval_predictions(capsys, tmp_path, model_dir)
    result, predictions = _eval_predictions(capsys, tmp_path, model_dir, "--runtime", runtime)
    assert result["runtime"] == runtime and result["n"] == torch_result["n"] == 6
    assert predictions == torch_predictions


@pytest.mark.parametrize("runtime, module", [("openvino", "openvino"), ("onnxruntime", "onnx")])
def test_a_runtime_without_its_package_says_which_extra_to_install(tmp_path, capsys, monkeypatch, runtime, module):
    import sys

    from dtb_ext.answering import QuestionAnswerer
    from dtb_ext.cli import main
    from tiny_qa import save_tiny_qa_model

    model_dir = save_tiny_qa_model(str(tmp_path / "tiny"))
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: find_spec and import both fail
    assert main(["eval", "--model", model_dir, "--runtime", runtime, "--limit", "2", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"runtime {runtime} needs the dtb_ext[openvino] extra, and {module} is not installed" in error
    assert 'pip install "dtb_ext[openvino]" (--runtime torch runs without it)' in error
    with pytest.raises(ValueError, match=rf"runtime {runtime} needs the dtb_ext\[openvino\] extra.*runtime='torch'"):
        QuestionAnswerer(model_dir, runtime=runtime, precision="fp32")


def test_dtb_export_writes_a_graph_that_dtb_eval_runs(tmp_path, capsys):
    pytest.importorskip("openvino", reason="openvino is not installed")
    from dtb_ext.cli import main
    from tiny_qa import save_tiny_qa_model

    model_dir = save_tiny_qa_model(str(tmp_path / "tiny"))
    output = str(tmp_path / "exported")
    assert main(["export", "--model", model_dir, "--output", output, "--length-ratios", "0.8,0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == output
    graph = ExportedQA(output)
    assert graph.default_length_config == {"ratios": [0.8, 0.5]} and graph.precision == "fp32"
    _, torch_predictions = _eval_predictions(capsys, tmp_path, model_dir)
    _, predictions = _eval_predictions(capsys, tmp_path, output, "--runtime", "openvino")
    assert predictions == torch_predictions
    assert main(["eval", "--model", output, "--runtime", "openvino", "--precision", "bf16", "--limit", "2"]) == 2
    assert "holds a fp32 openvino export" in capsys.readouterr().err
    assert main(["export", "--model", model_dir, "--output", output, "--format", "onnx", "--precision", "int8"]) == 2
    assert "ONNX export is fp32" in capsys.readouterr().err
