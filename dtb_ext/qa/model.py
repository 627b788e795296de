"""Loading a span-QA model directory (config, tokenizer, safetensors) for inference, with errors that say how to
make one. The library's loaders (the serving facade, the search, the demo, `dtb eval`) all come through here."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dtb_ext.data_paths import DEFAULT_MODEL_DIR

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The one text on how to make a model: dtb_ext/default_model/README.md holds the default model's exact commands.
HOW_TO_MAKE_A_MODEL = (
    "train one with `dtb train --output RUN` and pass `--model RUN/model`; the bundled default model (v4) is made "
    "by four such runs (fine-tuning, two LengthDrop epochs, then the relevance scorer alone), whose commands "
    "dtb_ext/default_model/README.md lists: copy the last one's RUN/model/. to dtb_ext/default_model/"
)


def load_qa_model(path: str, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in float32 on `device`, tokenizer) from a model directory; ValueError when it is missing or has no
    trained QA head."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        if os.path.abspath(path) == DEFAULT_MODEL_DIR:
            raise ValueError(f"the bundled default model is missing ({DEFAULT_MODEL_DIR}): {HOW_TO_MAKE_A_MODEL}")
        raise ValueError(f"no model directory with a config.json at {path!r}: {HOW_TO_MAKE_A_MODEL}")
    # imported here so that building the command line (`dtb --help`) does not load torch and transformers
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    # fp16-exported weights are widened to float32: CPU inference in fp16 is slow and less accurate
    model, loading = AutoModelForQuestionAnswering.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    untrained = sorted(key for key in loading["missing_keys"] if key.startswith("qa_outputs"))
    if untrained:
        # a base encoder would get a fresh random QA head: its scores would be noise, different on every run
        raise ValueError(f"{path} is not a question-answering model: {', '.join(untrained)} missing; "
                         f"{HOW_TO_MAKE_A_MODEL}")
    return model.to(device), AutoTokenizer.from_pretrained(path)
