// Run-time choice of the instruction set of the CPU kernels, as ATen does with CPU_CAPABILITY.
//
// Every kernel file csrc/cpu/*.cpp is compiled once per instruction set (setup.py, CMakeLists.txt), each time with
// that set's compiler flags and -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512 (which also selects ATen's at::vec code), into
// the namespace dtb::CPU_CAPABILITY. csrc/cpu_kernels.cpp registers the copy of the chosen instruction set when
// the library is loaded, so the dispatcher calls the chosen kernels directly and a call costs what it did before.
// This file, csrc/cpu_capability.cpp and csrc/cpu_kernels.cpp are compiled for the baseline instruction set.
//
// The choice: the widest set that was built and that this CPU (and its operating system) runs. The environment
// variable ATEN_CPU_CAPABILITY (default, avx2 or avx512; the one PyTorch reads) lowers it; a request this CPU
// cannot run, or an unknown value, is not followed and leaves a warning (dtb_ext.ops raises it as a Python warning).
#pragma once

#include <string>
#include <vector>

namespace dtb::cpu {

// Ordered: each set includes the ones before it. The names match the values of the CPU_CAPABILITY macro.
enum class Capability : int { DEFAULT = 0, AVX2 = 1, AVX512 = 2 };

// "default", "avx2" or "avx512": the spelling of ATEN_CPU_CAPABILITY.
const char* capability_name(Capability capability);

struct CapabilityChoice {
  Capability chosen;
  Capability cpu_best;    // the widest set this CPU runs
  std::string requested;  // the value of ATEN_CPU_CAPABILITY; empty when unset
  std::string warning;    // why the request was not followed; empty when it was (or when there was none)
};

// The decision alone, for any CPU: `built` lists the sets compiled into the library (DEFAULT always).
CapabilityChoice choose_capability(const std::string& requested, Capability cpu_best,
                                   const std::vector<Capability>& built);

// The widest set the CPU this process runs on supports, with the operating system's support for its registers.
Capability cpu_best_capability();

// Whether this CPU has the AVX512-BF16 dot products (VDPBF16PS), which the AVX512 attention kernel uses for bf16.
bool cpu_has_avx512_bf16();

// Whether Linux granted this process the AMX tile registers (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA, asked
// once per process on first use; oneDNN asks the same way) on a CPU with AMX-TILE. Every AMX path needs it.
bool cpu_amx_tiles_permitted();

// Whether the AVX512 attention kernel computes its bf16 products on AMX tiles (TDPBF16PS): the CPU has AMX-TILE and
// AMX-BF16 besides AVX512-BF16, Linux granted this process the tile registers (arch_prctl ARCH_REQ_XCOMP_PERM,
// requested here on first use), and DTB_ATTENTION_AMX is not "0" (which keeps the AVX512-BF16 dot products).
bool cpu_amx_attention();

// Whether the int8 Linear ops can run a weight packed by dtb::int8_amx_pack_weight on AMX tiles (TDPBUSD): the
// AVX512 kernels are the chosen set, the CPU has AMX-TILE and AMX-INT8, and cpu_amx_tiles_permitted(). This is the
// hardware and the operating system only: DTB_INT8_AMX=0 is read where the weights are packed
// (dtb_ext/precision/int8.py), which then packs for oneDNN.
bool cpu_amx_int8();

// The sets compiled into this library, in increasing order.
std::vector<Capability> built_capabilities();

// The choice for this process, made once (on first use) from ATEN_CPU_CAPABILITY and the CPU.
const CapabilityChoice& active_capability();

}  // namespace dtb::cpu
