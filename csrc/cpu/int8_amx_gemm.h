// The int8 Linear ops' GEMM on AMX tiles (int8_amx_gemm.cpp), in place of oneDNN's where the weight was packed by
// dtb::int8_amx_pack_weight (../op_checks.h Int8WeightFormat::kAmx) and the CPU allows AMX-INT8
// (../cpu_capability.h cpu_amx_int8).
//
// The packed weight of an [N, K] int8 weight w (N a multiple of 16, K of 64) is a contiguous int8 tensor
// [N / 16, 16 K + 64]: row b holds output channels 16 b .. 16 b + 15 as
//   bytes [0, 16 K): the VNNI layout of TDPBUSD's B operand, byte 64 g + 4 c + j = w[16 b + c][4 g + j] for the
//     group g < K / 4 of 4 consecutive input features and the column c < 16, so that the 16 groups of a 64-deep
//     slice of K are one 16 x 64-byte tile at 1024-byte steps;
//   bytes [16 K, 16 K + 64): 16 int32 (native byte order), 128 * sum_k w[16 b + c][k]: the quantized rows are uint8
//     holding the int8 value + 128 (dtb::quantize_rows), so sum_k (q + 128) w = sum_k q w + 128 colsum(w), and
//     this is what is subtracted from each TDPBUSD sum to leave the int8 rows' exact int32 sums.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace dtb::CPU_CAPABILITY {

#if defined(CPU_CAPABILITY_AVX512)

// A thread's buffers for amx_int8_product: a 16-row tile of zero-padded input rows (the last rows of a block that
// are not a whole tile), the int32 sums of one 32 x 32 block of the product, and the caller's float32 product block.
struct AmxInt8Scratch {
  std::vector<uint8_t> padded_rows;  // [16, K]
  std::vector<float> product;        // the product block the caller hands the epilogue
  alignas(64) int32_t sums[32 * 32];
};

// This thread's scratch, grown to hold `in_features` and a product block of `product_elements` floats: kept from
// call to call (the threads of ATen's pool live on), so that its pages are not faulted in again on every call.
AmxInt8Scratch& amx_int8_scratch(int64_t in_features, int64_t product_elements);

// Inside an amx::TileScope: out[r * N + n] = float(sum_k (a[r][k] - 128) w[n][k]) * weight_scale[n] for r < rows,
// with `a` [rows, K] uint8 rows (row stride K) and `packed` the weight as described above: the int32 sums are exact
// and each is converted to float32 and multiplied by its channel's scale once, rounded to nearest even, as oneDNN's
// int8 GEMM gives it (onednn::qlinear_pointwise with x_scale 1, zero point 128 and float32 output). Any rows >= 0.
void amx_int8_product(const uint8_t* a, int64_t rows, int64_t in_features, const int8_t* packed,
                      int64_t out_features, const float* weight_scale, float* out, AmxInt8Scratch& scratch);

#endif  // CPU_CAPABILITY_AVX512

}  // namespace dtb::CPU_CAPABILITY
