// The dtb operator library: every schema, once. Kernels register per backend: cpu_kernels.cpp registers the CPU
// kernels of csrc/cpu/*.cpp for the instruction set chosen at load, cuda/binding.cpp the CUDA ones; dtb_ext/ops.py
// adds the fake (meta) implementations and the autograd formulas.
#include <torch/library.h>

TORCH_LIBRARY(dtb, m) {
  // scores [B, H, L, L], mask [B, L] -> probs [B, H, L, L] (dtype of scores), significance [B, L] float32.
  m.def("softmax_with_significance(Tensor scores, Tensor mask) -> (Tensor probs, Tensor significance)");
  // hidden [B, L, D], significance [B, L], mask [B, L], keep [B] int64 ->
  // kept_hidden [B, K, D], kept_mask [B, K] (dtype of mask), kept_positions [B, K] int64 with K = max_keep.
  m.def(
      "select_and_gather(Tensor hidden, Tensor significance, Tensor mask, Tensor keep, int max_keep, "
      "bool keep_first) -> (Tensor kept_hidden, Tensor kept_mask, Tensor kept_positions)");
  // base [B, L0, D], src [B, K, D], positions [B, K] int64 -> a new [B, L0, D] tensor.
  m.def("restore(Tensor base, Tensor src, Tensor positions) -> Tensor");
  // query, key, value [B, H, n, d], mask [B, n] or None (keys to attend to) -> [B, H, n, d] (a view of a
  // [B, n, H, d] tensor): softmax(scale * query key^T over the valid keys) value. CPU kernel only (inference).
  m.def("attention(Tensor query, Tensor key, Tensor value, Tensor? mask, float scale) -> Tensor");
  // The same, and significance [B, n] float32: the attention each key receives, summed over heads and valid queries
  // (as softmax_with_significance gives it). CPU kernel only (inference).
  m.def(
      "attention_with_significance(Tensor query, Tensor key, Tensor value, Tensor mask, float scale) -> "
      "(Tensor context, Tensor significance)");
  // x [M, K] float32/bfloat16, divisor [K] float32 or None -> quantized [M, K] uint8 (int8 value + 128), scale [M]
  // float32: per-row symmetric int8 quantization of x / divisor (dtb_ext/reference.py quantize_rows). CPU only.
  m.def("quantize_rows(Tensor x, Tensor? divisor) -> (Tensor quantized, Tensor scale)");
  // product [M, N] float32, scale [M] float32, bias [N] float32 or None, residual [M, N] or None ->
  // act(product * scale[:, None] + bias) + residual in dtype (float32/bfloat16); activation "none", "gelu" (erf) or
  // "gelu_tanh". CPU only.
  m.def(
      "dequantize_rows(Tensor product, Tensor scale, Tensor? bias, Tensor? residual, str activation, "
      "ScalarType dtype) -> Tensor");
  // product, scale, bias, activation, dtype as dequantize_rows (no residual), divisor [N] float32 or None ->
  // quantize_rows(dequantize_rows(...), divisor), fused row by row. CPU only.
  m.def(
      "dequantize_quantize_rows(Tensor product, Tensor scale, Tensor? bias, str activation, ScalarType dtype, "
      "Tensor? divisor) -> (Tensor quantized, Tensor scale)");
  // product, scale, bias as dequantize_rows, residual [M, N] dtype, LayerNorm weight/bias [N] dtype or None, eps ->
  // out = LayerNorm(dequantize_rows(...)) in dtype and, with quantize, quantize_rows(out, divisor) (else [0, N], [0]).
  // CPU only.
  m.def(
      "dequantize_layer_norm_rows(Tensor product, Tensor scale, Tensor? bias, Tensor residual, Tensor? weight, "
      "Tensor? layer_norm_bias, float eps, ScalarType dtype, bool quantize, Tensor? divisor) -> "
      "(Tensor out, Tensor quantized, Tensor quantized_scale)");
  // weight [N, K] int8 (N a multiple of 16, K of 64) -> the same weight packed for the int8 Linear ops' GEMM on AMX
  // tiles: a new contiguous int8 tensor [N / 16, 16 K + 64] (layout: csrc/cpu/int8_amx_gemm.h). CPU only.
  m.def("int8_amx_pack_weight(Tensor weight) -> Tensor");
  // The int8 Linear from its quantized input: quantized [M, K] uint8 and scale [M] as quantize_rows gives them,
  // weight an [N, K] int8 weight prepacked either by onednn::qlinear_prepack (MkldnnCPU, shape [K, N]: oneDNN's int8
  // GEMM) or by int8_amx_pack_weight (a CPU int8 tensor [N / 16, 16 K + 64]: the GEMM on AMX tiles, on CPUs and
  // systems that allow AMX-INT8; elsewhere refused), weight_scale [N] float32, weight_zero_points [N] int64 zeros ->
  // what dequantize_rows, dequantize_quantize_rows and dequantize_layer_norm_rows give of the int8 matmul's product
  // (both GEMMs give the same float32 product, bit for bit), the rest of the arguments as theirs. CPU only.
  m.def(
      "int8_linear(Tensor quantized, Tensor scale, Tensor weight, Tensor weight_scale, Tensor weight_zero_points, "
      "Tensor? bias, Tensor? residual, str activation, ScalarType dtype) -> Tensor");
  m.def(
      "int8_linear_quantize(Tensor quantized, Tensor scale, Tensor weight, Tensor weight_scale, "
      "Tensor weight_zero_points, Tensor? bias, str activation, ScalarType dtype, Tensor? divisor) -> "
      "(Tensor quantized, Tensor scale)");
  m.def(
      "int8_linear_layer_norm(Tensor quantized, Tensor scale, Tensor weight, Tensor weight_scale, "
      "Tensor weight_zero_points, Tensor? bias, Tensor residual, Tensor? layer_norm_weight, "
      "Tensor? layer_norm_bias, float eps, ScalarType dtype, bool quantize, Tensor? divisor) -> "
      "(Tensor out, Tensor quantized, Tensor quantized_scale)");
}
