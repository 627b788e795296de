"""The demo's two loops over its runners (runners.py): F1/EM of every runner and configuration on the same
features, and batch-1 latency of every runner, configuration and padding protocol, interleaved feature by feature."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Sequence

from dtb_ext.config import LengthConfig
from dtb_ext.demo.configs import PADDINGS, DemoConfig, run_spec
from dtb_ext.demo.runners import QARunner


def measure_scores(runners: Sequence[QARunner], features: Any, configs: Sequence[DemoConfig], batch_size: int,
                   progress: bool = True) -> dict[tuple[str, LengthConfig], dict[str, Any]]:
    """{(runner name, config): {"f1", "exact_match", ...}} over every feature (EvalFeatures), batches of
    `batch_size` with dynamic padding; full length runs under its own (all-kept) config."""
    scores = {}
    for runner in runners:
        for config in configs:
            if progress:
                print(f"F1/EM at {config.label} {list(config.length_config.values)}, {runner.name}", file=sys.stderr)
            scores[runner.name, config.length_config] = runner.evaluate(
                features, run_spec(config.length_config, None), batch_size, progress)
    return scores


def measure_latency(
    runners: Sequence[QARunner], features: Any, configs: Sequence[DemoConfig], full_length: LengthConfig,
    progress: bool = True,
) -> dict[tuple[str, LengthConfig], dict[str, float]]:
    """Median milliseconds of one batch-1 forward per feature (EvalFeatures), for every runner, config and padding
    protocol; full length runs without a config.

    Every feature is run under every (runner, config) and protocol in turn (`Interleaved`: the order shuffled
    from feature to feature), so a change of machine load during the measurement hits all of them alike. One
    untimed pass of every feature through every case and protocol comes first: the steady state a serving process
    reaches (oneDNN compiles a kernel per matmul shape on first use, and token dropping makes a new shape at every
    layer; OpenVINO compiles per input shape). Returns {(runner name, config): {padding: ms}}."""
    import torch

    from dtb_ext.timing import Interleaved

    device = runners[0].device
    inputs = {
        padding: [{k: v.to(device) for k, v in batch.items()} for _, batch in features.batches(1, padding)]
        for padding in PADDINGS
    }
    cases = [(runner, config.length_config) for runner in runners for config in configs]

    def forward(runner: QARunner, config: LengthConfig, padding: str) -> Callable[[int], None]:
        """The batch-1 forward of feature `index` for one case and protocol, as Interleaved times it."""
        spec = run_spec(config, full_length)
        return lambda index: runner.forward(inputs[padding][index], spec)

    timer = Interleaved({(runner.name, config, padding): forward(runner, config, padding)
                         for runner, config in cases for padding in PADDINGS}, range(len(features)))
    with torch.inference_mode():
        timer.warm_up(progress)
        timer.run_round(progress)
    medians = timer.summary()
    return {(runner.name, config): {padding: medians[runner.name, config, padding]["median_ms"]
                                    for padding in PADDINGS} for runner, config in cases}
