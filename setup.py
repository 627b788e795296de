"""Builds the `dtb_ext._C` extension: CPU sources always, CUDA sources when the installed torch has CUDA
and a CUDA toolkit (CUDA_HOME) is found. Install with `pip install --no-build-isolation .`."""
from __future__ import annotations

import glob
import os

from setuptools import setup

import torch
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _extension():
    cpu_sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    cxx_flags = ["-O3", "-std=c++17"]
    build_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and os.environ.get("DTB_NO_CUDA", "0") != "1"
    )
    if build_cuda:
        print(f"dtb_ext: building CPU and CUDA kernels (torch CUDA {torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME})")
        return cpp_extension.CUDAExtension(
            "dtb_ext._C",
            cpu_sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags + ["-DDTB_WITH_CUDA"], "nvcc": ["-O3", "-std=c++17", "-DDTB_WITH_CUDA"]},
            py_limited_api=False,
        )
    reason = "torch has no CUDA" if torch.version.cuda is None else "no CUDA toolkit found (CUDA_HOME)"
    print(f"dtb_ext: building CPU kernels only ({reason})")
    return cpp_extension.CppExtension(
        "dtb_ext._C",
        cpu_sources,
        extra_compile_args={"cxx": cxx_flags + ["-fopenmp"]},
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
