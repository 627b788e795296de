// The run-time choice of the CPU kernels' instruction set (csrc/cpu_capability.h) for CPUs other than this one:
// never a set the CPU lacks or the build lacks, ATEN_CPU_CAPABILITY followed when it can be, a warning when not.
// No framework: prints each failure and exits non-zero if any check failed.
#include <iostream>
#include <string>
#include <vector>

#include "../../csrc/cpu_capability.h"

namespace {

using dtb::cpu::Capability;

int failures = 0;

void expect(bool condition, const std::string& what) {
  if (!condition) {
    ++failures;
    std::cerr << "FAILED: " << what << "\n";
  }
}

const std::vector<Capability> kAll{Capability::DEFAULT, Capability::AVX2, Capability::AVX512};

void expect_choice(const std::string& requested, Capability cpu, const std::vector<Capability>& built,
                   Capability expected, const std::string& warning_part) {
  const dtb::cpu::CapabilityChoice choice = dtb::cpu::choose_capability(requested, cpu, built);
  const std::string what = "request '" + requested + "' on a " + dtb::cpu::capability_name(cpu) + " CPU";
  expect(choice.chosen == expected, what + ": chose " + dtb::cpu::capability_name(choice.chosen) + ", expected " +
                                        dtb::cpu::capability_name(expected));
  expect(choice.cpu_best == cpu && choice.requested == requested, what + ": CPU or request not recorded");
  if (warning_part.empty()) {
    expect(choice.warning.empty(), what + ": unexpected warning '" + choice.warning + "'");
  } else {
    expect(choice.warning.find(warning_part) != std::string::npos,
           what + ": warning '" + choice.warning + "' lacks '" + warning_part + "'");
  }
}

void test_without_a_request_the_widest_the_cpu_runs() {
  expect_choice("", Capability::AVX512, kAll, Capability::AVX512, "");
  expect_choice("", Capability::AVX2, kAll, Capability::AVX2, "");
  expect_choice("", Capability::DEFAULT, kAll, Capability::DEFAULT, "");
  expect_choice("", Capability::AVX512, {Capability::DEFAULT, Capability::AVX2}, Capability::AVX2, "");
}

void test_a_request_within_the_cpu_is_followed() {
  expect_choice("default", Capability::AVX512, kAll, Capability::DEFAULT, "");
  expect_choice("avx2", Capability::AVX512, kAll, Capability::AVX2, "");
  expect_choice("avx512", Capability::AVX512, kAll, Capability::AVX512, "");
  expect_choice("avx2", Capability::AVX2, kAll, Capability::AVX2, "");
}

void test_a_request_beyond_the_cpu_falls_back_with_a_warning() {
  expect_choice("avx512", Capability::AVX2, kAll, Capability::AVX2, "this CPU cannot run (it supports at most avx2)");
  expect_choice("avx512", Capability::DEFAULT, kAll, Capability::DEFAULT, "supports at most default");
  expect_choice("avx2", Capability::DEFAULT, kAll, Capability::DEFAULT, "cannot run");
}

void test_a_request_for_a_set_not_built_falls_back_with_a_warning() {
  expect_choice("avx512", Capability::AVX512, {Capability::DEFAULT, Capability::AVX2}, Capability::AVX2,
                "lacks (built: default, avx2); using avx2");
  expect_choice("avx2", Capability::AVX512, {Capability::DEFAULT, Capability::AVX512}, Capability::DEFAULT,
                "lacks (built: default, avx512)");
}

void test_an_unknown_request_is_ignored_with_a_warning() {
  expect_choice("AVX2", Capability::AVX512, kAll, Capability::AVX512, "must be default, avx2 or avx512");
  expect_choice("sse4", Capability::AVX2, kAll, Capability::AVX2, "got 'sse4': ignored; using avx2");
}

}  // namespace

int main() {
  test_without_a_request_the_widest_the_cpu_runs();
  test_a_request_within_the_cpu_is_followed();
  test_a_request_beyond_the_cpu_falls_back_with_a_warning();
  test_a_request_for_a_set_not_built_falls_back_with_a_warning();
  test_an_unknown_request_is_ignored_with_a_warning();
  if (failures > 0) {
    std::cerr << failures << " check(s) failed\n";
    return 1;
  }
  std::cout << "dtb C++ CPU capability tests passed (this CPU runs " << dtb::cpu::capability_name(
                   dtb::cpu::cpu_best_capability())
            << "; chosen here: " << dtb::cpu::capability_name(dtb::cpu::active_capability().chosen) << ")\n";
  return 0;
}
