"""Storing a chosen length configuration in a saved model's config.json, where `dtb_ext.patch()` (patching.py, the
reader of the same field) applies it on load."""
from __future__ import annotations

import json
import os
from typing import Any

from dtb_ext.config import LengthSpec, as_length_config
from dtb_ext.jsonfile import read_json_file
from dtb_ext.models.patching import CONFIG_ATTRIBUTE


def save_config_to_model(model_dir: str, length_config: LengthSpec | Any) -> str:
    """Write `length_config` into `model_dir`/config.json under `dtb_length_config`, the field `patch()` reads.

    length_config: None (full length), per-layer ints (absolute lengths), a `LengthConfig` (absolute or ratios,
    e.g. `LengthConfig.ratios([...])`), or a front `Point` (its `length_config`, as `pick` returns it). Checked
    against the model's layer count; the file is replaced atomically. Returns the path of config.json."""
    path = os.path.join(model_dir, "config.json")
    config = read_json_file(path, "model config", "the config.json of a saved Hugging Face model directory")
    num_layers = config.get("num_hidden_layers")
    if not isinstance(num_layers, int):
        raise ValueError(f"{path} has no integer num_hidden_layers (got {num_layers!r}); is it a BERT-family model?")
    spec = getattr(length_config, "length_config", length_config)  # a front Point carries its LengthConfig
    resolved = as_length_config(spec, num_layers)
    config[CONFIG_ATTRIBUTE] = None if resolved is None else resolved.to_json()
    with open(path + ".tmp", "w") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(path + ".tmp", path)
    return path
