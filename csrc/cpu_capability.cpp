// The run-time choice of the CPU kernels' instruction set (see cpu_capability.h). Compiled for the baseline
// instruction set, like the rest of the glue: it runs before anything is known about the CPU.
#include "cpu_capability.h"

#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace dtb::cpu {

const char* capability_name(Capability capability) {
  switch (capability) {
    case Capability::AVX512:
      return "avx512";
    case Capability::AVX2:
      return "avx2";
    case Capability::DEFAULT:
      break;
  }
  return "default";
}

namespace {

std::optional<Capability> parse_capability(const std::string& name) {
  for (Capability capability : {Capability::DEFAULT, Capability::AVX2, Capability::AVX512}) {
    if (name == capability_name(capability)) {
      return capability;
    }
  }
  return std::nullopt;
}

std::string names_of(const std::vector<Capability>& capabilities) {
  std::string names;
  for (Capability capability : capabilities) {
    names += (names.empty() ? "" : ", ") + std::string(capability_name(capability));
  }
  return names;
}

}  // namespace

CapabilityChoice choose_capability(const std::string& requested, Capability cpu_best,
                                   const std::vector<Capability>& built) {
  const std::optional<Capability> wanted = requested.empty() ? std::nullopt : parse_capability(requested);
  // The widest built set within both the request and the CPU; DEFAULT is always built.
  const Capability ceiling = wanted && *wanted < cpu_best ? *wanted : cpu_best;
  Capability chosen = Capability::DEFAULT;
  for (Capability capability : built) {
    if (capability <= ceiling && capability > chosen) {
      chosen = capability;
    }
  }
  CapabilityChoice choice{chosen, cpu_best, requested, ""};
  const std::string using_chosen = std::string("; using ") + capability_name(chosen);
  if (!requested.empty() && !wanted) {
    choice.warning = "ATEN_CPU_CAPABILITY must be default, avx2 or avx512 to choose the dtb CPU kernels, got '" +
                     requested + "': ignored" + using_chosen;
  } else if (wanted && *wanted > cpu_best) {
    choice.warning = "ATEN_CPU_CAPABILITY=" + requested + " asks for kernels this CPU cannot run (it supports at most " +
                     capability_name(cpu_best) + ")" + using_chosen;
  } else if (wanted && *wanted != chosen) {
    choice.warning = "ATEN_CPU_CAPABILITY=" + requested + " asks for kernels this build of dtb_ext lacks (built: " +
                     names_of(built) + ")" + using_chosen;
  }
  return choice;
}

Capability cpu_best_capability() {
#if defined(__x86_64__) || defined(__i386__)
  // The same flags the kernels are compiled with (setup.py, CMakeLists.txt). __builtin_cpu_supports also checks
  // that the operating system saves the vector registers (XGETBV), not only that the CPU has them.
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma");
  if (avx512) {
    return Capability::AVX512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return Capability::AVX2;
  }
#endif
  return Capability::DEFAULT;
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0 && cpu_best_capability() == Capability::AVX512;
  }();
  return has;
#else
  return false;
#endif
}

bool cpu_amx_tiles_permitted() {
#if defined(__linux__) && defined(__x86_64__)
  static const bool permitted = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("amx-tile")) {
      return false;
    }
    // Linux hands out the 8 KiB of tile state only to processes that ask (oneDNN asks the same way); the
    // permission is process-wide. 0x1023 = ARCH_REQ_XCOMP_PERM, 18 = XFEATURE_XTILEDATA.
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return permitted;
#else
  return false;
#endif
}

bool cpu_amx_attention() {
#if defined(__linux__) && defined(__x86_64__)
  static const bool usable = [] {
    const char* setting = std::getenv("DTB_ATTENTION_AMX");
    if (setting != nullptr && std::strcmp(setting, "0") == 0) {
      return false;
    }
    if (!cpu_has_avx512_bf16() || !__builtin_cpu_supports("amx-bf16")) {
      return false;
    }
    return cpu_amx_tiles_permitted();
  }();
  return usable;
#else
  return false;
#endif
}

bool cpu_amx_int8() {
#if defined(__linux__) && defined(__x86_64__)
  static const bool usable = [] {
    __builtin_cpu_init();
    if (active_capability().chosen != Capability::AVX512 || !__builtin_cpu_supports("amx-int8")) {
      return false;
    }
    return cpu_amx_tiles_permitted();
  }();
  return usable;
#else
  return false;
#endif
}

std::vector<Capability> built_capabilities() {
  std::vector<Capability> built{Capability::DEFAULT};
#ifdef DTB_HAVE_AVX2_KERNELS
  built.push_back(Capability::AVX2);
#endif
#ifdef DTB_HAVE_AVX512_KERNELS
  built.push_back(Capability::AVX512);
#endif
  return built;
}

const CapabilityChoice& active_capability() {
  static const CapabilityChoice choice = [] {
    const char* requested = std::getenv("ATEN_CPU_CAPABILITY");
    return choose_capability(requested ? requested : "", cpu_best_capability(), built_capabilities());
  }();
  return choice;
}

}  // namespace dtb::cpu
