// The CPU kernels' entry points, declared once for each instruction-set copy (dtb::DEFAULT, dtb::AVX2,
// dtb::AVX512; csrc/cpu/*.cpp defines them, compiled once per set: csrc/cpu_capability.h).
//
// Only csrc/cpu_kernels.cpp, compiled for the baseline, registers them with the dispatcher. The per-set files hold no
// registration code: m.impl instantiates templates (schema inference, boxing wrappers) that every copy would
// share, and the linker keeps one copy of each shared instance, which must not be an AVX one.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "cpu_capability.h"

#define DTB_DECLARE_CPU_KERNELS(set)                                                                              \
  namespace dtb::set {                                                                                           \
  std::tuple<at::Tensor, at::Tensor> softmax_with_significance_cpu(const at::Tensor& scores, const at::Tensor& mask); \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> select_and_gather_cpu(                                          \
      const at::Tensor& hidden, const at::Tensor& significance, const at::Tensor& mask, const at::Tensor& keep,  \
      int64_t max_keep, bool keep_first);                                                                       \
  at::Tensor restore_cpu(const at::Tensor& base, const at::Tensor& src, const at::Tensor& positions);            \
  at::Tensor attention_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,               \
                           const std::optional<at::Tensor>& mask, double scale);                                 \
  std::tuple<at::Tensor, at::Tensor> attention_with_significance_cpu(                                            \
      const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, const at::Tensor& mask,           \
      double scale);                                                                                             \
  std::tuple<at::Tensor, at::Tensor> quantize_rows_cpu(const at::Tensor& x, const std::optional<at::Tensor>& divisor); \
  at::Tensor dequantize_rows_cpu(const at::Tensor& product, const at::Tensor& scale,                             \
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual, \
                                 c10::string_view activation, at::ScalarType dtype);                             \
  std::tuple<at::Tensor, at::Tensor> dequantize_quantize_rows_cpu(                                               \
      const at::Tensor& product, const at::Tensor& scale, const std::optional<at::Tensor>& bias,                 \
      c10::string_view activation, at::ScalarType dtype, const std::optional<at::Tensor>& divisor);              \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> dequantize_layer_norm_rows_cpu(                                 \
      const at::Tensor& product, const at::Tensor& scale, const std::optional<at::Tensor>& bias,                 \
      const at::Tensor& residual, const std::optional<at::Tensor>& weight,                                        \
      const std::optional<at::Tensor>& layer_norm_bias,                                                          \
      double eps, at::ScalarType dtype, bool quantize, const std::optional<at::Tensor>& divisor);                \
  at::Tensor int8_linear_cpu(const at::Tensor& quantized, const at::Tensor& scale, const at::Tensor& weight,      \
                             const at::Tensor& weight_scale, const at::Tensor& weight_zero_points,               \
                             const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,   \
                             c10::string_view activation, at::ScalarType dtype);                                  \
  std::tuple<at::Tensor, at::Tensor> int8_linear_quantize_cpu(                                                   \
      const at::Tensor& quantized, const at::Tensor& scale, const at::Tensor& weight,                            \
      const at::Tensor& weight_scale, const at::Tensor& weight_zero_points, const std::optional<at::Tensor>& bias, \
      c10::string_view activation, at::ScalarType dtype, const std::optional<at::Tensor>& divisor);              \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_linear_layer_norm_cpu(                                     \
      const at::Tensor& quantized, const at::Tensor& scale, const at::Tensor& weight,                            \
      const at::Tensor& weight_scale, const at::Tensor& weight_zero_points, const std::optional<at::Tensor>& bias, \
      const at::Tensor& residual, const std::optional<at::Tensor>& weight_ln,                                     \
      const std::optional<at::Tensor>& layer_norm_bias, double eps, at::ScalarType dtype, bool quantize,         \
      const std::optional<at::Tensor>& divisor);                                                                 \
  at::Tensor int8_amx_pack_weight_cpu(const at::Tensor& weight);                                                 \
  }

DTB_DECLARE_CPU_KERNELS(DEFAULT)
DTB_DECLARE_CPU_KERNELS(AVX2)
DTB_DECLARE_CPU_KERNELS(AVX512)

#undef DTB_DECLARE_CPU_KERNELS
