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
    (m).impl("int8_amx_pack_weight", &::dtb::set::int8_amx_pack_weight_cpu);                  \
    DTB_REGISTER_INT8_LINEAR_KERNELS(m, set);                                                 \
  } while (false)

// The int8 Linear ops take a prepacked weight: oneDNN's is a MkldnnCPU tensor, which makes MkldnnCPU their dispatch
// key; dtb::int8_amx_pack_weight's is a plain CPU tensor (CPU key). The same kernels serve both keys and tell the
// two layouts apart themselves (../op_checks.h int8_weight_shape).
#define DTB_REGISTER_INT8_LINEAR_KERNELS(m, set)                                              \
  do {                                                                                        \
    (m).impl("int8_linear", &::dtb::set::int8_linear_cpu);                                    \
    (m).impl("int8_linear_quantize", &::dtb::set::int8_linear_quantize_cpu);                  \
    (m).impl("int8_linear_layer_norm", &::dtb::set::int8_linear_layer_norm_cpu);              \
  } while (false)

// Expands to the registration of the chosen instruction set's kernels by REGISTER (one of the macros above).
#define DTB_REGISTER_CHOSEN_SET(m, REGISTER)                                                  \
  do {                                                                                        \
    switch (::dtb::cpu::active_capability().chosen) {                                         \
      DTB_CASE_AVX512(m, REGISTER)                                                            \
      DTB_CASE_AVX2(m, REGISTER)                                                              \
      default: /* only built sets are ever chosen (choose_capability), so this is DEFAULT */  \
        REGISTER(m, DEFAULT);                                                                 \
        return;                                                                               \
    }                                                                                         \
  } while (false)

#ifdef DTB_HAVE_AVX512_KERNELS
#define DTB_CASE_AVX512(m, REGISTER)        \
  case ::dtb::cpu::Capability::AVX512:      \
    REGISTER(m, AVX512);                    \
    return;
#else
#define DTB_CASE_AVX512(m, REGISTER)
#endif
#ifdef DTB_HAVE_AVX2_KERNELS
#define DTB_CASE_AVX2(m, REGISTER)          \
  case ::dtb::cpu::Capability::AVX2:        \
    REGISTER(m, AVX2);                      \
    return;
#else
#define DTB_CASE_AVX2(m, REGISTER)
#endif

TORCH_LIBRARY_IMPL(dtb, CPU, m) { DTB_REGISTER_CHOSEN_SET(m, DTB_REGISTER_CPU_KERNELS); }

TORCH_LIBRARY_IMPL(dtb, MkldnnCPU, m) { DTB_REGISTER_CHOSEN_SET(m, DTB_REGISTER_INT8_LINEAR_KERNELS); }
