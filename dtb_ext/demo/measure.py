"""The demo's latency loop: batch-1 forwards of every precision and configuration, interleaved feature by
feature."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Sequence

from dtb_ext.config import LengthConfig
from dtb_ext.demo.configs import DemoConfig, run_spec

PADDINGS = ("dynamic", "max_length")


def measure_latency(
    models: dict[str, Any], features: Any, configs: Sequence[DemoConfig], full_length: tuple[int, ...],
    progress: bool = True,
) -> dict[tuple[str, tuple[int, ...]], dict[str, float]]:
    """Median milliseconds of one batch-1 forward per feature, for every precision (`models`: precision ->
    patched model), config and padding protocol.

    Every feature is run under every (precision, config) and protocol in turn (`Interleaved`: the order rotating
    from feature to feature), so a change of machine load during the measurement hits all of them alike. One
    untimed pass of every feature through every case and protocol comes first: the steady state a serving process
    reaches (oneDNN compiles a kernel per matmul shape on first use, and token dropping makes a new shape at every
    layer). Returns {(precision, config): {padding: ms}}."""
    import torch

    from dtb_ext.models.patching import length_config
    from dtb_ext.timing import Interleaved

    device = next(next(iter(models.values())).parameters()).device
    inputs = {
        padding: [{k: v.to(device) for k, v in batch.items()} for _, batch in features.batches(1, padding)]
        for padding in PADDINGS
    }
    cases = [(precision, config.length_config) for precision in models for config in configs]

    def forward(precision: str, config: LengthConfig, padding: str) -> Callable[[int], None]:
        """The batch-1 forward of feature `index` for one case and protocol, as Interleaved times it."""
        model = models[precision]

        def run(index: int) -> None:
            with length_config(model, run_spec(config, full_length)):
                model(**inputs[padding][index])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

        return run

    for model in models.values():
        model.eval()
    timer = Interleaved({(case, padding): forward(*case, padding) for case in cases for padding in PADDINGS},
                        range(len(features)))
    with torch.inference_mode():
        timer.warm_up(progress)
        timer.run_round(progress)
    medians = timer.summary()
    return {case: {padding: medians[case, padding]["median_ms"] for padding in PADDINGS} for case in cases}


