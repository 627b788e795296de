"""dtb_ext: Dynamic-TinyBERT / Length-Adaptive Transformer inference for BERT-family encoders.

One trained model serves every compute budget: a per-layer length configuration picks how many tokens each
layer keeps; the least-attended tokens are dropped and, for span QA, restored at the end.
"""
from dtb_ext.ops import has_kernels

__all__ = ["has_kernels"]
__version__ = "0.1.0"
