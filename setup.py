"""Builds the `dtb_ext._C` extension: CPU sources always, CUDA sources when the installed torch has CUDA
and a CUDA toolkit (CUDA_HOME) is found. Install with `pip install --no-build-isolation .`.

The CPU kernels use ATen's at::vec::Vectorized, whose instruction set is fixed at compile time. As ATen does with
CPU_CAPABILITY, each kernel file (csrc/cpu/*.cpp) is compiled once per instruction set, with that set's flags and
-DCPU_CAPABILITY=<set>, and the library chooses one at load time from the CPU and ATEN_CPU_CAPABILITY
(csrc/cpu_capability.h); the glue (op schemas, the choice, the registration of the chosen set's kernels, the call
of oneDNN's int8 GEMM through the dispatcher, the Python module, the CUDA binding) is compiled for the baseline.
So a wheel built here runs on any x86-64 CPU. On x86-64 every set is built; `DTB_CPU_CAPABILITIES=default,avx512`
(for example) builds fewer, which shortens a development build."""
from __future__ import annotations

import glob
import os
import platform

from setuptools import setup

import torch
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_CAPABILITIES_FILE = os.path.join(HERE, "csrc", "cpu_capabilities.txt")


def _read_cpu_capabilities(path: str) -> dict[str, list[str]]:
    """Instruction set -> compiler flags of its kernel files, in increasing order, from csrc/cpu_capabilities.txt
    (lines "name: flags"; # starts a comment), the list CMakeLists.txt reads too."""
    capabilities = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, flags = line.partition(":")
                capabilities[name.strip()] = flags.split()
    return capabilities


CPU_CAPABILITIES = _read_cpu_capabilities(CPU_CAPABILITIES_FILE)


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


KERNEL_SOURCES = _sources("csrc/cpu/*.cpp")
HEADERS = _sources("csrc/*.h") + _sources("csrc/cuda/*.h")


def _capabilities_to_build() -> list[str]:
    """The instruction sets to compile the kernels for, in increasing order (DEFAULT first: see build_extension)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return ["default"]
    requested = os.environ.get("DTB_CPU_CAPABILITIES")
    if requested is None:
        return list(CPU_CAPABILITIES)
    names = [name.strip() for name in requested.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CPU_CAPABILITIES))
    if unknown or "default" not in names:
        raise ValueError(
            f"DTB_CPU_CAPABILITIES must be a comma-separated list of {', '.join(CPU_CAPABILITIES)} that includes "
            f"default (the kernels every CPU runs); got {requested!r}"
        )
    return [name for name in CPU_CAPABILITIES if name in names]


CAPABILITIES = _capabilities_to_build()


class BuildExtensionPerCapability(cpp_extension.BuildExtension):
    """torch's BuildExtension, plus the kernel files compiled once per instruction set (each into its own object
    folder, with its own flags) and linked after the glue. Link order matters: where the copies share an inline
    function or template instance (ATen's, the standard library's), the linker keeps the first one it sees, so the
    glue's and DEFAULT's baseline code is kept, and AVX2's before AVX512's; code a CPU cannot run is never shared."""

    def build_extension(self, ext) -> None:
        macros = ext.define_macros + [(name,) for name in ext.undef_macros]
        kernel_objects = []
        for capability in CAPABILITIES:
            flags = dict(ext.extra_compile_args)
            flags["cxx"] = ext.extra_compile_args["cxx"] + CPU_CAPABILITIES[capability]
            kernel_objects += self.compiler.compile(
                KERNEL_SOURCES, output_dir=os.path.join(self.build_temp, f"cpu_{capability}"), macros=macros,
                include_dirs=ext.include_dirs, debug=self.debug, extra_postargs=flags, depends=ext.depends,
            )
        ext.extra_objects = kernel_objects
        super().build_extension(ext)


def _extension():
    glue_sources = _sources("csrc/*.cpp")
    cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    built = [f"-DDTB_HAVE_{name.upper()}_KERNELS" for name in CAPABILITIES if name != "default"]
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"] + built
    # Kernel files and headers: a change to any of them relinks the extension.
    depends = KERNEL_SOURCES + HEADERS + [os.path.relpath(CPU_CAPABILITIES_FILE, HERE)]
    cpu_kernels = f"CPU kernels for {', '.join(CAPABILITIES)} (chosen at run time)"
    build_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and os.environ.get("DTB_NO_CUDA", "0") != "1"
    )
    if build_cuda:
        print(f"dtb_ext: building {cpu_kernels} and CUDA kernels (torch CUDA {torch.version.cuda}, "
              f"CUDA_HOME={cpp_extension.CUDA_HOME})")
        return cpp_extension.CUDAExtension(
            "dtb_ext._C",
            glue_sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags + ["-DDTB_WITH_CUDA"],
                                "nvcc": ["-O3", "-std=c++17", "-DDTB_WITH_CUDA"]},
            extra_link_args=["-fopenmp"],
            depends=depends,
            py_limited_api=False,
        )
    if torch.version.cuda is None:
        reason = "torch has no CUDA"
    elif cpp_extension.CUDA_HOME is None:
        reason = "no CUDA toolkit found (CUDA_HOME)"
    else:
        reason = "DTB_NO_CUDA=1"
    print(f"dtb_ext: building {cpu_kernels} only ({reason})")
    return cpp_extension.CppExtension(
        "dtb_ext._C",
        glue_sources,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
        depends=depends,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtensionPerCapability},
)
