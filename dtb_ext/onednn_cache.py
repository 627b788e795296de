"""A larger oneDNN primitive cache, so that bf16 Linears at many sequence lengths stop recompiling their kernels.

On the CPU, PyTorch runs bf16 matmuls through oneDNN, which JIT-compiles one kernel ("primitive") per problem
shape and keeps the last `ONEDNN_PRIMITIVE_CACHE_CAPACITY` of them (default 1024). Dynamic padding makes the
token count M of every Linear vary from request to request, and token dropping adds a different M at every
layer: one BERT-family model has about five weight shapes (query/key/value/output, intermediate, output, the QA
head, a relevance scorer), so serving every length up to 384 needs about 5 x 384 = 1,920 primitives. At the
default capacity the cache then evicts what the next request needs and each forward pass compiles kernels again;
measured on MiniLM-L6 at batch 1 in bf16 (24 dev-a features, four configs interleaved), a dropping config ran in
32.9 ms with the default capacity and 22.4 ms with a capacity of 16,384, and the full-length model was 26 vs 24 ms.

oneDNN reads the variable once, when it creates its first primitive; `import dtb_ext` sets it (unless the user
already has) so that it is in place before the first bf16 forward pass. fp32 matmuls go to MKL and are
unaffected.

The cache costs memory: about 375 KiB of resident memory per cached kernel. The bf16 default model run at every
length from 1 to 384 held 714 MiB more with this cache than with the cache off (about 1,900 kernels); oneDNN's own
default already allows about 375 MiB, and DEFAULT_CAPACITY bounds the worst case (two precisions' kernels in one
process) at about 3 GiB. Set the variable lower before `import dtb_ext` where memory matters more than latency.
"""
from __future__ import annotations

import os

CAPACITY_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
# Room for every token count up to 384 for the five weight shapes of a model in two precisions in one process
# (demo, benchmarks: 3,840 kernels), with margin.
DEFAULT_CAPACITY = 8192


def set_default_capacity() -> str:
    """Set ONEDNN_PRIMITIVE_CACHE_CAPACITY to DEFAULT_CAPACITY unless it is already set; returns its value."""
    return os.environ.setdefault(CAPACITY_VARIABLE, str(DEFAULT_CAPACITY))
