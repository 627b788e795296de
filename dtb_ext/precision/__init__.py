"""Numeric precision as a setting: resolve a user's choice ("auto" included) and prepare a loaded model for it.

Precisions:
    fp32: float32 weights and activations (the reference every other precision is measured against).
    bf16: bfloat16 weights and activations for inference; the kernels accumulate significance in float32.
    int8: int8 Linear weights and per-token int8 activations (CPU only; see `dtb_ext.precision.int8`).

`auto` is the fastest precision this machine runs natively: bf16 on a CPU with AVX512-BF16 or AMX, or on a CUDA
GPU that supports bf16; fp32 otherwise. int8 is never chosen automatically, since it changes accuracy.

torch is imported inside the functions so that building a command line (`--precision` choices) stays cheap.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

PRECISIONS = ("fp32", "bf16", "int8")
PRECISION_CHOICES = PRECISIONS + ("auto",)

# /proc/cpuinfo flags that mean bf16 matmuls run natively (oneDNN uses them for bf16 GEMMs).
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def resolve_precision(name: str, device: torch.device | str = "cpu") -> str:
    """The concrete precision ("fp32", "bf16" or "int8") for `name` on `device`; "auto" is resolved and printed.

    Raises:
        ValueError: `name` is not one of PRECISION_CHOICES, or int8 is asked for on a non-CPU device.
    """
    if name not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}; got {name!r}")
    device_type = _device_type(device)
    if name == "int8" and device_type != "cpu":
        raise ValueError(f"int8 runs on the CPU only (its int8 matmuls are oneDNN CPU kernels); got device {device!s}")
    if name != "auto":
        return name
    native_bf16, reason = _native_bf16(device_type)
    chosen = "bf16" if native_bf16 else "fp32"
    print(f"precision auto -> {chosen} ({reason})", file=sys.stderr)
    return chosen


def prepare_for_precision(model: nn.Module, precision: str) -> nn.Module:
    """Convert a loaded (optionally patched) model for inference at `precision`; returns the model to use.

    fp32 and bf16 convert the parameters in place and return `model` itself. int8 returns a quantized copy
    whose encoder Linear layers are int8 (see `dtb_ext.precision.int8.quantize_int8`); a patched model stays
    patched, so int8 composes with length dropping. The rest of an int8 model (embeddings, LayerNorm, attention,
    the activations between layers) runs in bf16 where the CPU runs bf16 natively (the rule of "auto"), else in
    fp32; the int8 layers' scales and sums stay fp32 either way. `precision` must be concrete: call
    `resolve_precision` for "auto".
    """
    import torch

    if precision == "fp32":
        return model.to(torch.float32)
    if precision == "bf16":
        return model.to(torch.bfloat16)
    if precision == "int8":
        from dtb_ext.precision.int8 import quantize_int8

        quantized = quantize_int8(model.to(torch.float32))
        return quantized.to(torch.bfloat16) if _native_bf16("cpu")[0] else quantized
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (resolve 'auto' first); got {precision!r}")


def autocast_dtype(precision: str, device_type: str = "cpu") -> torch.dtype | None:
    """The autocast dtype for training at `precision` on `device_type`: None (no autocast) for fp32, bfloat16 for
    bf16, and for int8 (quantization-aware training, dtb_ext/precision/qat.py) bfloat16 where the device runs it
    natively, else None: the int8 model's float part runs in bf16 there too (`prepare_for_precision`)."""
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "int8":
        return torch.bfloat16 if _native_bf16(device_type)[0] else None
    raise ValueError(f"training precision must be fp32, bf16 or int8 (resolve 'auto' first); got {precision!r}")


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where the file does not exist, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _native_bf16(device_type: str) -> tuple[bool, str]:
    """Whether `device_type` runs bf16 natively, and the evidence, for the printed auto choice."""
    import torch

    if device_type == "cuda":
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
        return supported, f"{name}: {'native' if supported else 'no native'} bf16"
    if device_type != "cpu":
        return False, f"device type {device_type}: no bf16 detection"
    found = sorted(cpu_flags() & _BF16_CPU_FLAGS)
    capability = torch.backends.cpu.get_cpu_capability()
    if found:
        return True, f"CPU flags {' '.join(found)}, torch CPU capability {capability}"
    return False, f"CPU without avx512_bf16/amx_bf16, torch CPU capability {capability}"


def _device_type(device: torch.device | str) -> str:
    import torch

    return torch.device(device).type
