"""The search objective on span QA: run the dynamic model at a length configuration over a fixed sample of
search-split questions, score F1/EM, and cost it in analytic MACs or measured latency."""
from __future__ import annotations

import dataclasses
import hashlib
import random
import statistics
import time
from typing import Any, Sequence

import torch

from dtb_ext.config import LengthConfig
from dtb_ext.macs import summed_macs
from dtb_ext.models.patching import ensure_patched, length_config
from dtb_ext.search.evaluation import COST_MODELS, Evaluation
from dtb_ext.search.space import SPACE_KINDS, Config


@dataclasses.dataclass(frozen=True)
class LatencySettings:
    """How latency is measured: `sample` features evenly spaced over the features sorted by length (a fixed set
    spanning short and long ones), run in batches of `batch_size` (dynamic padding), `warmup` untimed passes,
    then the median of `repeats` timed passes, reported as milliseconds per batch."""

    batch_size: int = 1
    sample: int = 16
    warmup: int = 1
    repeats: int = 5

    def __post_init__(self) -> None:
        for name in ("batch_size", "sample", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"latency {name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"latency warmup must be >= 0, got {self.warmup}")


def sample_questions(examples: Sequence[Any], count: int | None, seed: int) -> list[Any]:
    """A fixed random subset of `count` questions (None: all), kept in their original order."""
    if count is None:
        return list(examples)
    if count < 1 or count > len(examples):
        raise ValueError(f"the question sample must hold between 1 and {len(examples)} questions, got {count}")
    chosen = sorted(random.Random(seed).sample(range(len(examples)), count))
    return [examples[i] for i in chosen]


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the model's parameter and buffer names, shapes, dtypes and values: the same weights give the
    same fingerprint wherever they were loaded from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def questions_fingerprint(examples: Sequence[Any]) -> str:
    """sha256 over the ids of the questions (their order included)."""
    return hashlib.sha256("\n".join(e.qid for e in examples).encode()).hexdigest()


class QAEvaluator:
    """Evaluator for the search engine: `evaluator(config)` runs `evaluate_qa` on `features` with the model at
    `config` (never a proxy) and adds the cost.

    model: a *ForQuestionAnswering model; it is patched with the dynamic encoder if it is not yet.
    features: `prepare_eval_features(...)` of the evaluation questions.
    cost_model: "macs" (always computed: count_macs at every feature's real length, summed) or "latency"
        (additionally measured, see LatencySettings).
    space: "absolute" (configs are tokens per layer) or "ratios" (fractions of each feature's input length).
    Each evaluation keeps the F1 of every question (in the order of features.examples) for paired comparisons.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        features: Any,
        cost_model: str = "macs",
        batch_size: int = 32,
        padding: str = "dynamic",
        latency: LatencySettings | None = None,
        space: str = "absolute",
    ) -> None:
        if cost_model not in COST_MODELS:
            raise ValueError(f"cost model must be one of {COST_MODELS}, got {cost_model!r}")
        if space not in SPACE_KINDS:
            raise ValueError(f"space must be one of {SPACE_KINDS}, got {space!r}")
        if len(features) == 0:
            raise ValueError("the evaluation features are empty: no question could be featurised")
        self.model = ensure_patched(model)
        self.features = features
        self.cost_model = cost_model
        self.batch_size = batch_size
        self.padding = padding
        self.space = space
        self.latency = latency or LatencySettings()
        self._lengths = features.lengths
        self._latency_features = self._latency_sample() if cost_model == "latency" else None
        self._warmed_up = False

    def length_spec(self, config: Config | None) -> LengthConfig | None:
        """`config` of this evaluator's space as the LengthConfig the model runs (None: full length)."""
        if config is None:
            return None
        return LengthConfig.ratios(config) if self.space == "ratios" else LengthConfig.absolute(config)

    def macs(self, config: Config | None) -> int:
        """Encoder MACs of one pass over every feature at its real length under `config` (None: full length)."""
        return summed_macs(self.model.config, self.length_spec(config), self._lengths)

    def _latency_sample(self) -> Any:
        """A fixed subset of the features, evenly spaced in the length order, so it spans short and long ones."""
        n = len(self.features)
        if self.latency.sample > n:
            raise ValueError(f"a latency sample of {self.latency.sample} features was asked, only {n} features exist")
        return self.features.spread_by_length(self.latency.sample)

    def latency_ms(self, config: Config | None) -> float:
        """Median over repeats of the milliseconds per batch on the fixed latency sample."""
        if not self._warmed_up:
            # the first timed config would otherwise also pay for one-off costs (allocator, thread pool, caches)
            self._warmed_up = True
            self.latency_ms(None)
        sample = self._latency_features if self._latency_features is not None else self._latency_sample()
        device = next(self.model.parameters()).device
        batches = [
            {name: tensor.to(device) for name, tensor in inputs.items()}
            for _, inputs in sample.batches(self.latency.batch_size, "dynamic")
        ]
        was_training = self.model.training
        self.model.eval()
        timings = []
        try:
            with torch.inference_mode(), length_config(self.model, self.length_spec(config)):
                for repeat in range(self.latency.warmup + self.latency.repeats):
                    started = time.perf_counter()
                    for inputs in batches:
                        self.model(**inputs)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if repeat >= self.latency.warmup:
                        timings.append(time.perf_counter() - started)
        finally:
            self.model.train(was_training)
        return 1000.0 * statistics.median(timings) / len(batches)

    def __call__(self, config: Config) -> Evaluation:
        from dtb_ext.qa import evaluate_qa

        started = time.perf_counter()
        result = evaluate_qa(
            self.model, self.features, length_config=self.length_spec(config), batch_size=self.batch_size,
            padding=self.padding, progress=False, return_per_question=True,
        )
        latency = self.latency_ms(config) if self.cost_model == "latency" else None
        return Evaluation(
            f1=float(result["f1"]),
            exact_match=float(result["exact_match"]),
            macs=float(self.macs(config)),
            latency_ms=latency,
            n=int(result["n"]),
            seconds=time.perf_counter() - started,
            per_question_f1=tuple(result["per_question_f1"]),
        )
