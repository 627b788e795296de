"""Builds the `dtb_ext._C` extension: CPU sources always, CUDA sources when the installed torch has CUDA
and a CUDA toolkit (CUDA_HOME) is found. Install with `pip install --no-build-isolation .`.

The CPU kernels use ATen's at::vec::Vectorized, whose instruction set is fixed at compile time. The build picks
the widest set this machine supports (the extension is built where it runs); `DTB_CPU_ISA=avx512|avx2|default`
overrides the choice, for example to build for an older machine."""
from __future__ import annotations

import glob
import os
import platform

from setuptools import setup

import torch
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))

# instruction set -> (CPU flags it needs, compiler flags); the defines select ATen's matching Vectorized code.
CPU_ISAS: dict[str, tuple[set[str], list[str]]] = {
    "avx512": (
        {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"},
        ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    ),
    "avx2": (
        {"avx2", "fma", "f16c"},
        ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    ),
    "default": (set(), []),
}


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _host_cpu_flags() -> set[str]:
    if platform.machine() not in ("x86_64", "AMD64"):
        return set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_isa() -> str:
    requested = os.environ.get("DTB_CPU_ISA", "auto")
    if requested != "auto":
        if requested not in CPU_ISAS:
            raise ValueError(f"DTB_CPU_ISA must be one of auto, {', '.join(CPU_ISAS)}; got {requested!r}")
        return requested
    host = _host_cpu_flags()
    return next(name for name, (needed, _) in CPU_ISAS.items() if needed <= host)


def _extension():
    cpu_sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    isa = _cpu_isa()
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"] + CPU_ISAS[isa][1]
    build_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and os.environ.get("DTB_NO_CUDA", "0") != "1"
    )
    if build_cuda:
        print(f"dtb_ext: building CPU ({isa}) and CUDA kernels (torch CUDA {torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME})")
        return cpp_extension.CUDAExtension(
            "dtb_ext._C",
            cpu_sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags + ["-DDTB_WITH_CUDA"], "nvcc": ["-O3", "-std=c++17", "-DDTB_WITH_CUDA"]},
            extra_link_args=["-fopenmp"],
            py_limited_api=False,
        )
    reason = "torch has no CUDA" if torch.version.cuda is None else "no CUDA toolkit found (CUDA_HOME)"
    print(f"dtb_ext: building CPU kernels only ({isa}; {reason})")
    return cpp_extension.CppExtension(
        "dtb_ext._C",
        cpu_sources,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
