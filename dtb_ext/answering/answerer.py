"""`QuestionAnswerer`: answer questions about contexts of any length, each under its own compute budget.

Questions go through the evaluation's sliding windows (`prepare_eval_features`) and post-processing
(`SpanCollector`: the best span over all windows), so at full length and the same precision the answers are
`dtb eval`'s. Requests with different budgets share forward passes: each window runs under its question's length
configuration through one `MixedLengthConfig` (docs/design.md §2.8).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dtb_ext.answering.budget import (
    FULL_LENGTH,
    LATENCY_BUDGET_MS,
    MIN_SPEEDUP,
    SPEED_FLOORS,
    Budget,
    InputError,
    as_budget,
)
from dtb_ext.answering.latency import LatencyModel
from dtb_ext.config import LengthConfig, MixedLengthConfig
from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from dtb_ext.graph_export.runtimes import EXPORT_FORMAT, RUNTIMES, require_runtime_packages
from dtb_ext.macs import count_macs
from dtb_ext.models.patching import length_config, patch
from dtb_ext.precision import prepare_for_precision, resolve_precision
from dtb_ext.qa.data import SquadExample
from dtb_ext.qa.features import EvalFeatures, prepare_eval_features
from dtb_ext.qa.model import load_qa_model
from dtb_ext.qa.postprocess import SpanCollector
from dtb_ext.search.front import Front, Point, load_front
from dtb_ext.search.pick import pick

BudgetLike = Budget | Mapping[str, Any] | None


@dataclass(frozen=True)
class Answer:
    """The best span of the context: `context[start_char:end_char] == answer`. `score` is the span's start plus
    end logit (None, with an empty answer, when no window has a valid span); `length_config` is the
    configuration that served it (None: full length)."""

    answer: str
    start_char: int
    end_char: int
    score: float | None
    length_config: LengthConfig | None

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "start_char": self.start_char,
            "end_char": self.end_char,
            "score": self.score,
            "length_config": None if self.length_config is None else self.length_config.to_json(),
        }


@dataclass(frozen=True)
class PreparedQuestion:
    """One question tokenised into its windows (`features` holds a single example)."""

    features: EvalFeatures

    @property
    def lengths(self) -> list[int]:
        """Real token count of each window."""
        return [len(ids) for ids in self.features.input_ids]


class QuestionAnswerer:
    """A span-QA model with its front, answering under per-question budgets.

    Args:
        model_dir: a QA model directory (config, tokenizer, safetensors); None for the bundled default model.
        precision: "fp32", "bf16", "int8" or "auto" (`dtb_ext.precision`); fp32 gives `dtb eval`'s answers.
        front: the model's searched front (a path, a parsed dict or a Front); None for `<model_dir>/front.json`
            when it exists. Without a front only full length is available.
        device: torch device of the model.
        batch_size: windows per forward pass.
        max_seq_length, doc_stride, max_query_length: the sliding windows, as in `dtb eval`.
        latency_model: predicts a request's model time (for `latency_budget_ms`); default: calibrated on this
            machine on first use, then updated from every forward pass.
        patched: False runs the Hugging Face model as loaded (the unpatched baseline): full length only, no front.
        runtime: "torch", or "openvino" / "onnxruntime": the model is exported (`dtb_ext.export`) into a temporary
            directory kept while the answerer lives, as one graph whose keep rule is an input, so every budget
            runs in that runtime (CPU only; ONNX is fp32; int8 calibrates on the SQuAD training subset beside a
            checkout).
    """

    def __init__(
        self,
        model_dir: str | None = None,
        precision: str = "fp32",
        front: Front | str | dict[str, Any] | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        max_seq_length: int = 384,
        doc_stride: int = 128,
        max_query_length: int = 64,
        latency_model: LatencyModel | None = None,
        patched: bool = True,
        runtime: str = "torch",
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if runtime != "torch" and (device != "cpu" or not patched):
            raise ValueError(f"runtime {runtime!r} runs the patched model's exported graph on the CPU, got "
                             f"device={device!r}, patched={patched}")
        if runtime != "torch":
            require_runtime_packages(runtime, (resolve_precision(precision, device),),
                                     "runtime='torch' runs without it")
        self.model_dir = DEFAULT_MODEL_DIR if model_dir is None else model_dir
        self.precision = resolve_precision(precision, device)
        self.runtime = runtime
        model, self.tokenizer = load_qa_model(self.model_dir, device)
        if not patched and front is not None:
            raise ValueError("an unpatched model runs at full length only: it takes no front")
        self.patched = patched
        self.max_seq_length, self.doc_stride, self.max_query_length = max_seq_length, doc_stride, max_query_length
        if runtime == "torch":
            self.model = prepare_for_precision(patch(model) if patched else model, self.precision).eval()
            self.graph = None
        else:
            # The fp32 PyTorch model is traced; the runtime applies the precision. It stays for its config (MACs).
            self.model = patch(model).eval()
            self.graph = self._exported_graph(EXPORT_FORMAT[runtime])
        self.device = torch.device(device)
        self.num_layers = int(self.model.config.num_hidden_layers)
        self.batch_size = batch_size
        self.front = self._load_front(front) if patched else None
        self.latency_model = LatencyModel() if latency_model is None else latency_model
        self._macs = functools.lru_cache(maxsize=1 << 16)(self._macs_uncached)
        # Front-only ladders (every budget but latency_budget_ms) depend on the budget alone.
        self._front_ladder = functools.lru_cache(maxsize=1024)(
            lambda name, value: self._ladder(self.front, name, value))

    # --- the public answering API ----------------------------------------------------------------------------

    def answer(self, question: str, context: str, budget: BudgetLike = None) -> Answer:
        """Answer one question; `budget` is a Budget, a mapping such as {"min_speedup": 1.3}, or None (full length)."""
        prepared = self.prepare(question, context)
        return self.run([prepared], [self.configs_for(budget, prepared)[0]])[0]

    def answer_many(
        self,
        questions: Sequence[str],
        contexts: Sequence[str],
        budgets: BudgetLike | Sequence[BudgetLike] = None,
    ) -> list[Answer]:
        """Answer questions[i] about contexts[i], sharing forward passes; `budgets` is one budget for all or one
        per question. InputError names the field and index at fault, e.g. "question[3]"."""
        if len(questions) != len(contexts):
            raise ValueError(f"one context per question: got {len(questions)} questions and {len(contexts)} contexts")
        if budgets is None or isinstance(budgets, (Budget, Mapping)):
            budgets = [budgets] * len(questions)
        elif len(budgets) != len(questions):
            raise ValueError(f"one budget per question: got {len(budgets)} budgets for {len(questions)} questions")
        prepared, configs = [], []
        for index, (question, context, budget) in enumerate(zip(questions, contexts, budgets)):
            try:
                item = self.prepare(question, context)
                configs.append(self.configs_for(budget, item)[0])
            except InputError as error:
                raise InputError(f"{error.field}[{index}]", error.message) from None
            prepared.append(item)
        return self.run(prepared, configs)

    # --- the steps, for a server that batches requests itself ------------------------------------------------

    def prepare(self, question: str, context: str) -> PreparedQuestion:
        """Check and tokenise one question into its windows; InputError names "question" or "context"."""
        for field, text in (("question", question), ("context", context)):
            if not isinstance(text, str):
                raise InputError(field, f"must be a string, got {type(text).__name__}")
            if not text.strip():
                raise InputError(field, "must not be empty")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(field, "must be valid Unicode text (it holds a lone surrogate)") from None
        example = SquadExample(qid="0", title="", context=context, question=question, answers=(), answer_starts=())
        features = prepare_eval_features(
            [example], self.tokenizer, self.max_seq_length, self.doc_stride, self.max_query_length
        )
        if features.skips.total:
            reason = next(iter(features.skips.counts))  # e.g. "question longer than max_query_length=64 tokens"
            field = "question" if reason.startswith("question") else "context"
            raise InputError(field, reason.removeprefix(f"{field} "))
        return PreparedQuestion(features)

    def configs_for(self, budget: BudgetLike, prepared: PreparedQuestion) -> list[LengthConfig | None]:
        """The configurations `budget` allows for `prepared`, the one to use first: the budget's pick from the
        front (`dtb_ext.pick`), then, for speed floors (min_speedup, latency_budget_ms), pick's choice among the
        strictly faster ones, and so on: where a loaded server may move the request. None stands for full length.

        Raises InputError naming the budget when it is invalid or no configuration meets it."""
        budget = as_budget(budget)
        if budget.name == FULL_LENGTH:
            return [None]
        if not self.patched:
            raise InputError(budget.name, "this is the unpatched model, which runs at full length only: send no budget")
        if self.front is None:
            raise InputError(budget.name, f"this model has no front ({self.model_dir}/front.json), so only full "
                                          "length is available: search one with `dtb search` or send no budget")
        if budget.name == LATENCY_BUDGET_MS:
            ladder = self._ladder(self._front_with_latency(prepared), budget.name, budget.value)
        else:
            ladder = self._front_ladder(budget.name, budget.value)
        return [self._config_of(point) for point in ladder]

    def predicted_ms(self, prepared: PreparedQuestion, config: LengthConfig | None) -> float:
        """Predicted model milliseconds of `prepared` alone under `config` (calibrates on first use)."""
        if not self.latency_model.calibrated:
            self.calibrate()
        return self.latency_model.predict(sum(self._macs(config, length) for length in prepared.lengths) / 1e9)

    def run(self, prepared: Sequence[PreparedQuestion], configs: Sequence[LengthConfig | None]) -> list[Answer]:
        """Answer prepared questions, question i under configs[i], windows of all questions batched together
        (longest first, `batch_size` per forward pass, as in evaluation)."""
        if len(prepared) != len(configs):
            raise ValueError(f"one configuration per question: got {len(configs)} for {len(prepared)} questions")
        if not prepared:
            return []
        features = _merge_features([item.features for item in prepared])
        window_configs = [configs[e] for e in features.example_index]
        collector = SpanCollector(features)
        with torch.inference_mode():
            for indices, inputs in features.batches(self.batch_size):
                batch_configs = [window_configs[f] for f in indices]
                started = time.perf_counter()
                start_logits, end_logits = self._forward(inputs, _batch_spec(batch_configs))
                collector.add(indices, start_logits, end_logits)
                gmacs = sum(self._macs(config, len(features.input_ids[f])) for config, f in zip(batch_configs, indices))
                self.latency_model.observe(gmacs / 1e9, 1e3 * (time.perf_counter() - started))
        return [self._answer(features, collector, e, configs[e]) for e in range(len(prepared))]

    def calibrate(self, repeats: int = 2) -> float:
        """Time a full-length forward pass of one max_seq_length window (the last of `repeats`) and set the latency
        model from it; returns ms per GMAC."""
        positions = int(getattr(self.model.config, "max_position_embeddings", self.max_seq_length))
        length = min(self.max_seq_length, positions)
        filler = self.tokenizer.convert_tokens_to_ids("the")
        ids = torch.tensor([[self.tokenizer.cls_token_id] + [filler] * (length - 2) + [self.tokenizer.sep_token_id]])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        with torch.inference_mode():
            for _ in range(repeats):
                started = time.perf_counter()
                self._forward(inputs, None)
                elapsed_ms = 1e3 * (time.perf_counter() - started)
        gmacs = self._macs(None, length) / 1e9
        self.latency_model.observe(gmacs, elapsed_ms)
        return elapsed_ms / gmacs

    # --- internals -------------------------------------------------------------------------------------------

    def _forward(self, inputs: dict[str, torch.Tensor], spec: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits, [B, T] float32 on the CPU, of one padded batch under `spec`."""
        if self.graph is not None:
            return self.graph(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], spec)
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        if not self.patched:
            if spec is not None:
                raise ValueError("an unpatched model runs at full length only")
            outputs = self.model(**inputs)
        else:
            with length_config(self.model, spec):
                outputs = self.model(**inputs)
        return outputs.start_logits.float().cpu(), outputs.end_logits.float().cpu()

    def _exported_graph(self, format: str) -> Any:
        """The model exported to `format` in this answerer's precision, compiled (an `ExportedQA`)."""
        from dtb_ext.graph_export.calibration import training_calibration_inputs
        from dtb_ext.graph_export.convert import export
        from dtb_ext.graph_export.runtime import ExportedQA

        calibration = None
        if self.precision == "int8":
            calibration = training_calibration_inputs(
                self.tokenizer, self.model.config.num_hidden_layers, max_seq_length=self.max_seq_length,
                doc_stride=self.doc_stride, max_query_length=self.max_query_length)
        directory = tempfile.mkdtemp(prefix="dtb-answerer-")
        weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
        export(self.model, directory, format=format, precision=self.precision, calibration_inputs=calibration)
        return ExportedQA(directory, threads=torch.get_num_threads())

    def _answer(self, features: EvalFeatures, collector: SpanCollector, e: int, config: LengthConfig | None) -> Answer:
        if not np.isfinite(collector.score[e]):
            return Answer("", 0, 0, None, config)
        offsets = features.context_offsets[e]
        start = int(offsets[collector.first_token[e], 0])
        end = int(offsets[collector.last_token[e], 1])
        return Answer(features.examples[e].context[start:end], start, end, float(collector.score[e]), config)

    def _macs_uncached(self, config: LengthConfig | None, length: int) -> int:
        return count_macs(self.model.config, config, length).total

    def _load_front(self, front: Front | str | dict[str, Any] | None) -> Front | None:
        if front is None:
            shipped = os.path.join(self.model_dir, "front.json")
            if not os.path.isfile(shipped):
                return None
            front = shipped
        if isinstance(front, (str, os.PathLike)):
            front = load_front(os.fspath(front))
        elif isinstance(front, dict):
            front = Front.from_json(front)
        elif not isinstance(front, Front):
            raise ValueError("front must be a Front, a path to a front JSON or its parsed dict, got "
                             f"{type(front).__name__}")
        layers = front.full_length.length_config.num_layers
        if layers != self.num_layers:
            raise ValueError(f"the front's configurations have {layers} layers but the model has {self.num_layers}")
        return front

    @staticmethod
    def _ladder(front: Front, name: str, value: float) -> list[Point]:
        """`pick`'s choice for the budget; for a speed floor, then pick's choice among the strictly faster
        configurations, and so on (each one what pick would choose were the floor just above the last)."""
        try:
            ladder = [pick(front, **{name: value})]
        except ValueError as error:
            raise InputError(name, str(error)) from None
        while name in SPEED_FLOORS:
            last = ladder[-1]
            try:
                if name == MIN_SPEEDUP:
                    ladder.append(pick(front, min_speedup=last.speedup * (1 + 1e-9)))
                else:
                    ladder.append(pick(front, latency_budget_ms=last.latency_ms * (1 - 1e-9)))
            except ValueError:  # nothing faster
                break
        return ladder

    def _config_of(self, point: Point) -> LengthConfig | None:
        if point.length_config == self.front.full_length.length_config:
            return None  # full length runs as the unpatched model does, without a configuration
        return point.length_config

    def _front_with_latency(self, prepared: PreparedQuestion) -> Front:
        """The front with each point's latency_ms set to `prepared`'s predicted time under it."""
        def timed(point: Point) -> Point:
            return dataclasses.replace(point, latency_ms=self.predicted_ms(prepared, self._config_of(point)))

        return dataclasses.replace(
            self.front,
            points=tuple(timed(p) for p in self.front.points),
            front=tuple(timed(p) for p in self.front.front),
            full_length=timed(self.front.full_length),
        )


def _batch_spec(configs: Sequence[LengthConfig | None]) -> LengthConfig | MixedLengthConfig | None:
    """One configuration when the whole batch shares it (full length then runs without any), else a mixed one."""
    if all(config == configs[0] for config in configs):
        return configs[0]
    return MixedLengthConfig(configs)


def _merge_features(parts: Sequence[EvalFeatures]) -> EvalFeatures:
    """The windows of several prepared questions as one EvalFeatures, examples in the order given."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(part.examples) for part in parts[:-1]])
    return EvalFeatures(
        examples=[example for part in parts for example in part.examples],
        input_ids=[ids for part in parts for ids in part.input_ids],
        example_index=np.concatenate([part.example_index + offset for part, offset in zip(parts, offsets)]),
        context_start=np.concatenate([part.context_start for part in parts]),
        window_start=np.concatenate([part.window_start for part in parts]),
        window_length=np.concatenate([part.window_length for part in parts]),
        context_offsets=[offsets_e for part in parts for offsets_e in part.context_offsets],
        pad_token_id=parts[0].pad_token_id,
        max_seq_length=parts[0].max_seq_length,
    )
