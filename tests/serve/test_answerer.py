"""QuestionAnswerer: `dtb eval`'s answers at full length, mixed budgets in one call equal to each alone, budgets
picked from the front, and errors that name the field."""
from __future__ import annotations

import json
import os

import pytest

from dtb_ext.answering.answerer import QuestionAnswerer
from dtb_ext.answering.budget import Budget, InputError
from dtb_ext.answering.latency import LatencyModel
from dtb_ext.config import LengthConfig
from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from dtb_ext.macs import count_macs
from dtb_ext.qa.data import default_squad_file, load_squad
from dtb_ext.search.front import Front
from serving import TINY_FRONT_CONFIGS, save_tiny_model_with_front
from tiny_qa import save_tiny_qa_model

DEV_A = default_squad_file("dev-a-v1.1.json")
HAS_DEFAULT = os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, "model.safetensors"))
CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
           "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model_with_front(str(tmp_path_factory.mktemp("tiny_qa")))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return QuestionAnswerer(tiny_dir, latency_model=LatencyModel(ms_per_gmac=1000.0, learning_rate=0.0))


@pytest.fixture(scope="module")
def default_answerer():
    if not HAS_DEFAULT:
        pytest.skip("the bundled default model is missing")
    return QuestionAnswerer()


@pytest.mark.skipif(not os.path.isfile(DEV_A), reason="shared SQuAD data not found")
def test_full_length_gives_dtb_eval_answers(default_answerer, tmp_path):
    from dtb_ext.cli import main

    limit = 8
    predictions_file = tmp_path / "predictions.json"
    assert main(["eval", "--data", DEV_A, "--limit", str(limit), "--predictions", str(predictions_file),
                 "--no-progress"]) == 0
    expected = json.loads(predictions_file.read_text())
    examples = load_squad(DEV_A)[:limit]
    answers = default_answerer.answer_many([e.question for e in examples], [e.context for e in examples])
    assert [a.answer for a in answers] == [expected[e.qid] for e in examples]
    for example, answer in zip(examples, answers):
        assert example.context[answer.start_char:answer.end_char] == answer.answer
        assert answer.length_config is None


def test_the_shipped_front_serves_budgets_in_its_own_space(default_answerer):
    ladder = default_answerer.configs_for({"min_speedup": 1.2}, default_answerer.prepare("Where is Normandy?", CONTEXT))
    expected = [p.length_config for p in default_answerer.front.points if p.length_config in ladder]
    assert ladder and all(config in expected for config in ladder)
    answer = default_answerer.answer("Where is Normandy?", CONTEXT, {"min_speedup": 1.2})
    assert answer.length_config == ladder[0] and CONTEXT[answer.start_char:answer.end_char] == answer.answer


def test_mixed_budgets_in_one_call_equal_each_question_alone(tiny):
    questions = ["Who gave their name to Normandy?", "Where is Normandy?", "From where were they descended?",
                 "When did the Normans live?"]
    long_context = " ".join([CONTEXT] * 12)  # several windows
    contexts = [CONTEXT, long_context, CONTEXT, long_context]
    budgets = [None, {"min_speedup": 1.7}, Budget(max_f1_drop_percent=5.0), {"min_speedup": 2.0}]
    together = tiny.answer_many(questions, contexts, budgets)
    assert len(tiny.prepare(questions[1], long_context).lengths) > 1
    configs = {str(a.length_config) for a in together}
    assert len(configs) == 4  # four different configurations shared the forward passes
    for question, context, budget, mixed in zip(questions, contexts, budgets, together):
        alone = tiny.answer(question, context, budget)
        assert (mixed.answer, mixed.start_char, mixed.end_char, mixed.length_config) == (
            alone.answer, alone.start_char, alone.end_char, alone.length_config)
        assert mixed.score == pytest.approx(alone.score, abs=1e-4)
        assert context[mixed.start_char:mixed.end_char] == mixed.answer


def test_budgets_pick_from_the_front(tiny):
    prepared = tiny.prepare("Where is Normandy?", CONTEXT)
    assert tiny.configs_for(None, prepared) == [None]
    # the fastest within 5 % of F1 60: F1 >= 57 -> (200, 120); nothing faster is allowed
    assert tiny.configs_for({"max_f1_drop_percent": 5}, prepared) == [LengthConfig.absolute([200, 120])]
    # the most accurate with speedup >= 1.5, then the faster front points a loaded server may move it to
    ladder = tiny.configs_for({"min_speedup": 1.5}, prepared)
    speedups = [tiny.front.full_length.macs / count_macs(tiny.model.config, c.values, 384).total for c in ladder]
    assert speedups == sorted(speedups) and speedups[0] >= 1.5 and len(ladder) >= 2
    assert tiny.answer("Where is Normandy?", CONTEXT, {"min_speedup": 1.5}).length_config == ladder[0]


def test_latency_budget_uses_the_predicted_time_of_this_request(tiny):
    prepared = tiny.prepare("Where is Normandy?", " ".join([CONTEXT] * 12))
    times = {lengths: tiny.predicted_ms(prepared, None if lengths == (384, 384) else LengthConfig.absolute(lengths))
             for lengths in TINY_FRONT_CONFIGS}
    assert times[(384, 384)] > times[(200, 120)] > times[(120, 60)] > times[(40, 20)]
    budget = (times[(120, 60)] + times[(200, 120)]) / 2  # (200, 120) is too slow, (120, 60) fits
    ladder = tiny.configs_for({"latency_budget_ms": budget}, prepared)
    assert ladder == [LengthConfig.absolute([120, 60]), LengthConfig.absolute([40, 20])]
    assert tiny.configs_for({"latency_budget_ms": 10 * times[(384, 384)]}, prepared)[0] is None
    with pytest.raises(InputError, match="latency_budget_ms: no evaluated config meets") as caught:
        tiny.configs_for({"latency_budget_ms": times[(40, 20)] / 2}, prepared)
    assert caught.value.field == "latency_budget_ms"


@pytest.mark.parametrize(
    ("question", "context", "budget", "field", "message"),
    [
        ("", CONTEXT, None, "question", "must not be empty"),
        ("   ", CONTEXT, None, "question", "must not be empty"),
        ("Where?", "\n\t", None, "context", "must not be empty"),
        (7, CONTEXT, None, "question", "must be a string"),
        ("Where?", None, None, "context", "must be a string"),
        ("Where? \ud800", CONTEXT, None, "question", "lone surrogate"),
        ("why " * 80, CONTEXT, None, "question", "longer than max_query_length=64 tokens"),
        ("Where?", "\u200b", None, "context", "has no tokens"),
        ("Where?", CONTEXT, {"min_speedup": 100.0}, "min_speedup", "highest speedup"),
        ("Where?", CONTEXT, {"min_speedup": -1}, "min_speedup", "must be > 0"),
        ("Where?", CONTEXT, {"max_f1_drop_percent": -0.5}, "max_f1_drop_percent", ">= 0"),
        ("Where?", CONTEXT, {"latency_budget_ms": 0}, "latency_budget_ms", "must be > 0"),
        ("Where?", CONTEXT, {"min_speedup": "fast"}, "min_speedup", "must be a number"),
        ("Where?", CONTEXT, {"min_speedup": True}, "min_speedup", "must be a number"),
        ("Where?", CONTEXT, {"min_speedup": float("nan")}, "min_speedup", "finite"),
        ("Where?", CONTEXT, {"min_speedup": 1.2, "latency_budget_ms": 9}, "latency_budget_ms", "at most one budget"),
        ("Where?", CONTEXT, {"speed": 2}, "speed", "unknown budget"),
    ],
)
def test_bad_inputs_name_their_field(tiny, question, context, budget, field, message):
    with pytest.raises(InputError, match=message) as caught:
        tiny.answer(question, context, budget)
    assert caught.value.field == field


def test_answer_many_names_the_index_at_fault(tiny):
    with pytest.raises(InputError) as caught:
        tiny.answer_many(["Where?", ""], [CONTEXT, CONTEXT])
    assert caught.value.field == "question[1]"
    with pytest.raises(ValueError, match="one budget per question"):
        tiny.answer_many(["Where?"], [CONTEXT], [None, None])


def test_without_a_front_only_full_length_is_available(tiny_dir, tmp_path):
    bare = save_tiny_qa_model(str(tmp_path / "bare"))
    answerer = QuestionAnswerer(bare)
    assert answerer.front is None
    assert answerer.answer("Where is Normandy?", CONTEXT).length_config is None
    with pytest.raises(InputError, match="no front") as caught:
        answerer.answer("Where is Normandy?", CONTEXT, {"min_speedup": 1.1})
    assert caught.value.field == "min_speedup"
    wrong = Front.build("macs", [((384,), {"f1": 1.0, "exact_match": 1.0, "macs": 1.0, "latency_ms": None})], (384,))
    with pytest.raises(ValueError, match="1 layers but the model has 2"):
        QuestionAnswerer(bare, front=wrong)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_other_precisions_answer_from_the_context(tiny_dir, precision):
    answerer = QuestionAnswerer(tiny_dir, precision=precision)
    assert answerer.precision == precision
    answer = answerer.answer("Where is Normandy?", CONTEXT, {"min_speedup": 1.5})
    assert CONTEXT[answer.start_char:answer.end_char] == answer.answer != ""


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_an_exported_runtime_gives_the_torch_answers_under_mixed_budgets(tiny, tiny_dir, runtime):
    """runtime= exports the model once as one graph serving every budget: mixed budgets in one call answer as the
    PyTorch model does (fp32 both)."""
    pytest.importorskip(runtime, reason=f"{runtime} is not installed (the openvino extra)")
    exported = QuestionAnswerer(tiny_dir, runtime=runtime,
                                latency_model=LatencyModel(ms_per_gmac=1000.0, learning_rate=0.0))
    assert exported.runtime == runtime and exported.graph is not None
    questions = ["Who gave their name to Normandy?", "Where is Normandy?", "From where were they descended?"]
    contexts = [CONTEXT, " ".join([CONTEXT] * 12), CONTEXT]
    budgets = [None, {"min_speedup": 1.7}, {"min_speedup": 2.0}]
    for theirs, ours in zip(exported.answer_many(questions, contexts, budgets),
                            tiny.answer_many(questions, contexts, budgets)):
        assert (theirs.answer, theirs.start_char, theirs.end_char, theirs.length_config) == (
            ours.answer, ours.start_char, ours.end_char, ours.length_config)
        assert theirs.score == pytest.approx(ours.score, abs=1e-3)


def test_runtime_choices_are_checked(tiny_dir):
    with pytest.raises(ValueError, match="runtime must be one of torch, openvino, onnxruntime, got 'tensorrt'"):
        QuestionAnswerer(tiny_dir, runtime="tensorrt")
    with pytest.raises(ValueError, match="exported graph on the CPU, got device='cuda'"):
        QuestionAnswerer(tiny_dir, runtime="openvino", device="cuda")
    with pytest.raises(ValueError, match="patched=False"):
        QuestionAnswerer(tiny_dir, runtime="openvino", patched=False)
