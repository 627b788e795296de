// Registers the CPU kernels of the instruction set chosen at load time (cpu_capability.h) for the CPU dispatch key.
// Compiled for the baseline instruction set, like the rest of the glue: the templates m.impl instantiates (schema
// inference, boxing wrappers) are then baseline code, and the per-set kernel files instantiate none of them
// (cpu_kernels.h says why that matters).
#include <torch/library.h>

#include "cpu_kernels.h"

#define DTB_REGISTER_CPU_KERNELS(m, set)                                                      \
  do {                                                                                        \
    (m).impl("softmax_with_significance", &::dtb::set::softmax_with_significance_cpu);        \
    (m).impl("select_and_gather", &::dtb::set::select_and_gather_cpu);                        \
    (m).impl("restore", &::dtb::set::restore_cpu);                                            \
    (m).impl("attention", &::dtb::set::attention_cpu);                                        \
    (m).impl("attention_with_significance", &::dtb::set::attention_with_significance_cpu);    \
    (m).impl("quantize_rows", &::dtb::set::quantize_rows_cpu);                                \
    (m).impl("dequantize_rows", &::dtb::set::dequantize_rows_cpu);                            \
    (m).impl("dequantize_quantize_rows", &::dtb::set::dequantize_quantize_rows_cpu);          \
    (m).impl("dequantize_layer_norm_rows", &::dtb::set::dequantize_layer_norm_rows_cpu);      \
  } while (false)

TORCH_LIBRARY_IMPL(dtb, CPU, m) {
  switch (::dtb::cpu::active_capability().chosen) {
#ifdef DTB_HAVE_AVX512_KERNELS
    case ::dtb::cpu::Capability::AVX512:
      DTB_REGISTER_CPU_KERNELS(m, AVX512);
      return;
#endif
#ifdef DTB_HAVE_AVX2_KERNELS
    case ::dtb::cpu::Capability::AVX2:
      DTB_REGISTER_CPU_KERNELS(m, AVX2);
      return;
#endif
    default:
      // Only built sets are ever chosen (choose_capability), so this is DEFAULT.
      DTB_REGISTER_CPU_KERNELS(m, DEFAULT);
      return;
  }
}
