"""The dynamic (length-adaptive) encoder for Hugging Face BERT-family models and the API that switches it on."""
from dtb_ext.models.dynamic_encoder import DynamicEncoder
from dtb_ext.models.patching import (
    SUPPORTED_ARCHITECTURES,
    get_length_config,
    is_patched,
    length_config,
    patch,
    set_length_config,
    skip_layers,
)

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "DynamicEncoder",
    "get_length_config",
    "is_patched",
    "length_config",
    "patch",
    "set_length_config",
    "skip_layers",
]
