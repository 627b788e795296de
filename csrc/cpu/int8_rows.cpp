// CPU kernels of the two float passes around an int8 matmul (dtb_ext/precision/int8.py):
//
// dtb::quantize_rows: x [M, K] (float32 or bfloat16), divisor [K] or none -> quantized [M, K] uint8, scale [M]
//   float32. Per row m: v = x[m] / divisor (float32), scale[m] = max(max|v| / 127, 1e-12),
//   quantized[m] = round_half_even(v / scale[m]) + 128, so the int8 value round(v / scale) is stored with zero
//   point 128 (the unsigned source format oneDNN's int8 matmuls take) and lies in [1, 255].
// dtb::dequantize_rows: product [M, N] float32 (the matmul's int32 sums times the weights' per-channel scales),
//   scale [M], bias [N] or none, residual [M, N] or none -> [M, N] in `dtype`:
//   act(product * scale[m] + bias) + residual, with act none, GELU (erf) or GELU (tanh), rounded once.
// dtb::dequantize_quantize_rows: product, scale, bias as above, divisor [K] or none -> the quantize_rows of the
//   dequantize_rows (no residual) with that divisor, bit for bit: the epilogue of the intermediate Linear feeding
//   the output Linear, without the [M, N] activations in memory.
// dtb::dequantize_layer_norm_rows: product, scale, bias, residual (required) as dequantize_rows, LayerNorm weight
//   and bias [N] of `dtype` or none, eps -> out = LayerNorm(dequantize_rows(...)) over each row in float32, rounded to
//   `dtype`, and with quantize=True also quantize_rows(out, divisor): an output block of an int8 layer in one pass,
//   its result quantized for the next int8 Linear.
//
// dtb::int8_linear, dtb::int8_linear_quantize, dtb::int8_linear_layer_norm: the int8 Linear whole, from its
//   quantized input rows [M, K] uint8, scale [M] and a weight prepacked by onednn::qlinear_prepack with its scales
//   [N]: oneDNN's int8 GEMM (csrc/int8_matmul.h) and then the epilogue of dequantize_rows,
//   dequantize_quantize_rows or dequantize_layer_norm_rows, block of rows by block of rows, each thread running
//   both on its own blocks (for_each_product_block), so that the [M, N] float32 product is never in memory.
//
// One pass over each row instead of the 4-6 elementwise ATen ops (and their temporaries) the same arithmetic
// takes in PyTorch; they match dtb_ext/reference.py's quantize_rows / dequantize_rows (quantize_rows bit for bit).
// Each row is read in chunks of two float vectors (bfloat16 converted in registers) and rows of up to a few
// thousand columns stay in L1/L2 between the passes over them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>

#include "amx.h"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "../cpu_kernels.h"
#include "../int8_matmul.h"
#include "../op_checks.h"
#include "int8_amx_gemm.h"

// Compiled once per instruction set, into dtb::DEFAULT, dtb::AVX2 and dtb::AVX512 (see ../cpu_capability.h).
namespace dtb::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using Vec = Vectorized<float>;

constexpr float kQuantMax = 127.0f;
constexpr float kMinScale = 1e-12f;
constexpr float kZeroPoint = 128.0f;

// Rows per parallel task: about at::internal::GRAIN_SIZE elements, as ATen's own kernels use, so that a small
// matrix stays on the calling thread.
int64_t row_grain(int64_t columns) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, columns));
}

// The rows are processed in chunks of two float vectors (one Vectorized<BFloat16>); `count` < kChunk only at a
// row's end, where the lanes past `count` load as zeros and are not stored.
constexpr int64_t kChunk = 2 * Vec::size();

struct Chunk {
  Vec low;
  Vec high;
};

Vec load_partial(const float* source, int64_t count) {
  if (count >= Vec::size()) {
    return Vec::loadu(source);
  }
  return count > 0 ? Vec::loadu(source, count) : Vec(0.0f);
}

Chunk load_chunk(const float* source, int64_t count) {
  return {load_partial(source, count), load_partial(source + Vec::size(), count - Vec::size())};
}

// bfloat16 -> float32 is exact; ATen's vectorized conversion (at::vec::convert has no bf16 -> float32
// specialization and converts element by element).
Chunk load_chunk(const c10::BFloat16* source, int64_t count) {
  using BVec = Vectorized<c10::BFloat16>;
  const BVec packed = count >= kChunk ? BVec::loadu(source) : BVec::loadu(source, count);
  auto [low, high] = at::vec::convert_to_float<c10::BFloat16>(packed);
  return {low, high};
}

void store_chunk(const Chunk& chunk, float* out, int64_t count) {
  if (count >= kChunk) {
    chunk.low.store(out);
    chunk.high.store(out + Vec::size());
    return;
  }
  chunk.low.store(out, std::min<int64_t>(count, Vec::size()));
  if (count > Vec::size()) {
    chunk.high.store(out + Vec::size(), count - Vec::size());
  }
}

// float32 -> bfloat16 rounds half to even (ATen's conversion, the rounding of Tensor.to(torch.bfloat16)).
void store_chunk(const Chunk& chunk, c10::BFloat16* out, int64_t count) {
  const auto packed = at::vec::convert_from_float<c10::BFloat16>(chunk.low, chunk.high);
  if (count >= kChunk) {
    packed.store(out);
  } else {
    packed.store(out, count);
  }
}

// Stores the first `count` (<= Vec::size()) lanes of `levels`, integral values in [1, 255], as uint8.
void store_levels(const Vec& levels, uint8_t* out, int64_t count) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m128i bytes = _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(levels));
  if (count >= Vec::size()) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), bytes);
  } else {
    _mm_mask_storeu_epi8(out, static_cast<__mmask16>((1u << count) - 1u), bytes);
  }
#else
  float lanes[Vec::size()];
  levels.store(lanes);
  for (int64_t i = 0; i < std::min<int64_t>(count, Vec::size()); ++i) {
    out[i] = static_cast<uint8_t>(lanes[i]);
  }
#endif
}

// The end of quantize_row: the row's largest magnitude from `running` (the maximum of |values| over whole vectors
// up to `scalar_from`) and values[scalar_from:columns] one by one, then the quantized row of `values` (float32,
// divided by the divisor) into `quantized`; returns the row's scale.
float quantize_row_from_max(const float* values, const Vec& running, int64_t scalar_from, uint8_t* quantized,
                            int64_t columns) {
  float highest = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, running);
  for (int64_t k = scalar_from; k < columns; ++k) {
    highest = std::max(highest, std::abs(values[k]));
  }
  const float row_scale = std::max(highest / kQuantMax, kMinScale);
  // v / scale lies in [-127, 127] by construction of the scale, so no clamp is needed. Vectorized::round rounds
  // half to even, as torch.round does.
  const Vec scale_vec(row_scale);
  const Vec zero_point(kZeroPoint);
  for (int64_t k = 0; k < columns; k += Vec::size()) {
    const int64_t count = std::min<int64_t>(Vec::size(), columns - k);
    const Vec v = count == Vec::size() ? Vec::loadu(values + k) : Vec::loadu(values + k, count);
    store_levels((v / scale_vec).round() + zero_point, quantized + k, count);
  }
  return row_scale;
}

// Quantizes one row already in float32 (`values`, divided by the divisor): writes `quantized` and returns the
// row's scale.
float quantize_row(const float* values, uint8_t* quantized, int64_t columns) {
  Vec running(0.0f);
  int64_t k = 0;
  for (; k + Vec::size() <= columns; k += Vec::size()) {
    running = at::vec::maximum(running, Vec::loadu(values + k).abs());
  }
  return quantize_row_from_max(values, running, k, quantized, columns);
}

// values = row / divisor in float32 (row alone when divisor is null).
template <typename scalar_t>
void load_divided_row(const scalar_t* row, const float* divisor, float* values, int64_t columns) {
  for (int64_t k = 0; k < columns; k += kChunk) {
    const int64_t count = std::min(kChunk, columns - k);
    Chunk chunk = load_chunk(row + k, count);
    if (divisor != nullptr) {
      // Lanes past `count` divide 0 by 0; they are not stored.
      const Chunk factors = load_chunk(divisor + k, count);
      chunk = {chunk.low / factors.low, chunk.high / factors.high};
    }
    store_chunk(chunk, values + k, count);
  }
}

template <typename scalar_t>
void quantize_rows_kernel(const scalar_t* x, const float* divisor, uint8_t* quantized, float* scale, int64_t rows,
                          int64_t columns) {
  at::parallel_for(0, rows, row_grain(columns), [&](int64_t begin, int64_t end) {
    std::vector<float> values(columns);
    for (int64_t m = begin; m < end; ++m) {
      load_divided_row(x + m * columns, divisor, values.data(), columns);
      scale[m] = quantize_row(values.data(), quantized + m * columns, columns);
    }
  });
}

enum class Activation { kNone, kGeluErf, kGeluTanh };

Activation parse_activation(const std::string& name) {
  if (name == "none") {
    return Activation::kNone;
  }
  if (name == "gelu") {
    return Activation::kGeluErf;
  }
  if (name == "gelu_tanh") {
    return Activation::kGeluTanh;
  }
  TORCH_CHECK(false, "dtb::dequantize_rows: activation must be \"none\", \"gelu\" or \"gelu_tanh\", got \"", name,
              "\"");
}

// GELU on a vector, in float32: x * Phi(x) (approximate="none") or x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)
// (approximate="tanh"; the same as 0.5 x (1 + tanh(u))).
//
// Phi(x) = 1 - q / 2 for x >= 0 and q / 2 for x < 0, with q = 1 - erf(|x| / sqrt(2)) by Abramowitz and Stegun
// 7.1.26 (|error| <= 1.5e-7, the formula of ATen's Vectorized::erf), so a negative x loses no digits to 1 + erf. Its
// exp and the sigmoid's are ATen's polynomial exp_u20 (relative error about 2e-6) instead of Sleef's exp and tanh;
// the exp's error is scaled by q (resp. by the sigmoid) where GELU is small. In L1 on one AVX512 core (Xeon, AMX
// class) this is 1.27x faster than 0.5 x (1 + Vectorized::erf(x / sqrt(2))) and 4.8x faster than
// 0.5 x (1 + Vectorized::tanh(u)).
template <Activation activation>
Vec apply_activation(Vec x) {
  if constexpr (activation == Activation::kGeluErf) {
    const Vec one(1.0f);
    const Vec z = x.abs() * Vec(static_cast<float>(M_SQRT1_2));
    const Vec t = one / (Vec(0.3275911f) * z + one);
    Vec poly = Vec(1.061405429f) * t + Vec(-1.453152027f);
    poly = poly * t + Vec(1.421413741f);
    poly = poly * t + Vec(-0.284496736f);
    poly = poly * t + Vec(0.254829592f);
    const Vec q = poly * t * (Vec(0.0f) - z * z).exp_u20();
    const Vec half_q = Vec(0.5f) * q;
    return x * Vec::blendv(one - half_q, half_q, x < Vec(0.0f));
  } else if constexpr (activation == Activation::kGeluTanh) {
    const Vec u = Vec(static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5)) * (x + Vec(0.044715f) * x * x * x);
    // exp_u20 saturates at FLT_MAX for large arguments, so a very negative x gives x / (1 + FLT_MAX) = -0.
    return x / (Vec(1.0f) + (Vec(-2.0f) * u).exp_u20());
  } else {
    return x;
  }
}

// act(product * row_scale + bias) in float32 for the chunk of a row's product at column k (count columns).
template <Activation activation>
Chunk activated_chunk(const float* product, const Vec& scale_vec, const float* bias, int64_t k, int64_t count) {
  Chunk chunk = load_chunk(product + k, count);
  chunk = {chunk.low * scale_vec, chunk.high * scale_vec};
  if (bias != nullptr) {
    const Chunk added = load_chunk(bias + k, count);
    chunk = {chunk.low + added.low, chunk.high + added.high};
  }
  return {apply_activation<activation>(chunk.low), apply_activation<activation>(chunk.high)};
}

// One row of the epilogue: out = act(product * row_scale + bias) + residual, rounded once to scalar_t.
template <typename scalar_t, Activation activation>
void dequantize_row(const float* product, float row_scale, const float* bias, const scalar_t* residual,
                    scalar_t* out, int64_t columns) {
  const Vec scale_vec(row_scale);
  for (int64_t k = 0; k < columns; k += kChunk) {
    const int64_t count = std::min(kChunk, columns - k);
    Chunk chunk = activated_chunk<activation>(product, scale_vec, bias, k, count);
    if (residual != nullptr) {
      const Chunk added = load_chunk(residual + k, count);
      chunk = {chunk.low + added.low, chunk.high + added.high};
    }
    store_chunk(chunk, out + k, count);
  }
}

template <typename scalar_t, Activation activation>
void dequantize_rows_kernel(const float* product, const float* scale, const float* bias, const scalar_t* residual,
                            scalar_t* out, int64_t rows, int64_t columns) {
  at::parallel_for(0, rows, row_grain(columns), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      dequantize_row<scalar_t, activation>(product + m * columns, scale[m], bias,
                                           residual == nullptr ? nullptr : residual + m * columns,
                                           out + m * columns, columns);
    }
  });
}

// A chunk rounded to scalar_t and back to float32: the values a store to scalar_t and a load give (exact for float).
Chunk rounded_to(const Chunk& chunk, float) { return chunk; }

Chunk rounded_to(const Chunk& chunk, c10::BFloat16) {
  auto [low, high] = at::vec::convert_to_float<c10::BFloat16>(
      at::vec::convert_from_float<c10::BFloat16>(chunk.low, chunk.high));
  return {low, high};
}

// dequantize_rows then quantize_rows, row by row, in two passes over the row: the first computes each chunk of
// act(product * scale + bias), rounds it to scalar_t in registers (as the two ops' [M, N] scalar_t tensor holds
// it), divides it by the divisor, stores it to a float32 row buffer and tracks the largest magnitude; the second
// quantizes the buffer. The same operations in the same order as the two ops, so the same bits; the
// dequantized row is never stored as scalar_t and read back, and no separate pass finds the maximum.
template <typename scalar_t, Activation activation>
void dequantize_quantize_rows_kernel(const float* product, const float* scale, const float* bias,
                                     const float* divisor, uint8_t* quantized, float* quantized_scale, int64_t rows,
                                     int64_t columns) {
  at::parallel_for(0, rows, row_grain(columns), [&](int64_t begin, int64_t end) {
    std::vector<float> values(columns);
    for (int64_t m = begin; m < end; ++m) {
      const float* row = product + m * columns;
      const Vec scale_vec(scale[m]);
      Vec running(0.0f);
      int64_t scalar_from = columns;  // the maximum's scalar tail, where quantize_row's also starts
      for (int64_t k = 0; k < columns; k += kChunk) {
        const int64_t count = std::min(kChunk, columns - k);
        Chunk chunk = rounded_to(activated_chunk<activation>(row, scale_vec, bias, k, count), scalar_t{});
        if (divisor != nullptr) {
          // Lanes past `count` divide 0 by 0; they are neither stored nor counted in the maximum.
          const Chunk factors = load_chunk(divisor + k, count);
          chunk = {chunk.low / factors.low, chunk.high / factors.high};
        }
        store_chunk(chunk, values.data() + k, count);
        // Whole vectors into the running maximum, the rest one by one after them, exactly as quantize_row does.
        if (count >= Vec::size()) {
          running = at::vec::maximum(running, chunk.low.abs());
        }
        if (count == kChunk) {
          running = at::vec::maximum(running, chunk.high.abs());
        } else {
          scalar_from = k + (count >= Vec::size() ? Vec::size() : 0);
        }
      }
      quantized_scale[m] = quantize_row_from_max(values.data(), running, scalar_from, quantized + m * columns, columns);
    }
  });
}

// Sum of values[0:columns].
float row_sum(const float* values, int64_t columns) {
  Vec running(0.0f);
  int64_t k = 0;
  for (; k + Vec::size() <= columns; k += Vec::size()) {
    running = running + Vec::loadu(values + k);
  }
  float total = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, running);
  for (; k < columns; ++k) {
    total += values[k];
  }
  return total;
}

// Sum of (values[0:columns] - mean)^2.
float row_squared_deviation(const float* values, float mean, int64_t columns) {
  const Vec mean_vec(mean);
  Vec running(0.0f);
  int64_t k = 0;
  for (; k + Vec::size() <= columns; k += Vec::size()) {
    const Vec deviation = Vec::loadu(values + k) - mean_vec;
    running = running + deviation * deviation;
  }
  float total = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, running);
  for (; k < columns; ++k) {
    total += (values[k] - mean) * (values[k] - mean);
  }
  return total;
}

// dequantize_rows with the residual, then LayerNorm of each (rounded) row in float32, rounded to scalar_t, and
// optionally quantize_rows of that output with `divisor`: the attention-output block of an int8 layer, its result
// quantized for the intermediate Linear in the same pass. gamma, beta: [N] scalar_t or null (1 and 0).
template <typename scalar_t>
void dequantize_layer_norm_rows_kernel(const float* product, const float* scale, const float* bias,
                                       const scalar_t* residual, const scalar_t* gamma, const scalar_t* beta,
                                       float eps, scalar_t* out, const float* divisor, uint8_t* quantized,
                                       float* quantized_scale, int64_t rows, int64_t columns) {
  at::parallel_for(0, rows, row_grain(columns), [&](int64_t begin, int64_t end) {
    std::vector<float> values(columns);
    std::vector<float> gamma_values(columns, 1.0f);
    std::vector<float> beta_values(columns, 0.0f);
    if (gamma != nullptr) {
      load_divided_row(gamma, nullptr, gamma_values.data(), columns);
    }
    if (beta != nullptr) {
      load_divided_row(beta, nullptr, beta_values.data(), columns);
    }
    for (int64_t m = begin; m < end; ++m) {
      scalar_t* out_row = out + m * columns;
      // The summed row, rounded as dequantize_rows gives it, is kept in out_row until LayerNorm overwrites it.
      dequantize_row<scalar_t, Activation::kNone>(product + m * columns, scale[m], bias, residual + m * columns,
                                                  out_row, columns);
      load_divided_row(out_row, nullptr, values.data(), columns);
      const float mean = row_sum(values.data(), columns) / static_cast<float>(columns);
      const float variance = row_squared_deviation(values.data(), mean, columns) / static_cast<float>(columns);
      const Vec mean_vec(mean);
      const Vec inverse_std(1.0f / std::sqrt(variance + eps));
      for (int64_t k = 0; k < columns; k += kChunk) {
        const int64_t count = std::min(kChunk, columns - k);
        const Chunk v = load_chunk(values.data() + k, count);
        const Chunk g = load_chunk(gamma_values.data() + k, count);
        const Chunk b = load_chunk(beta_values.data() + k, count);
        store_chunk({(v.low - mean_vec) * inverse_std * g.low + b.low,
                     (v.high - mean_vec) * inverse_std * g.high + b.high},
                    out_row + k, count);
      }
      if (quantized != nullptr) {
        load_divided_row(out_row, divisor, values.data(), columns);
        quantized_scale[m] = quantize_row(values.data(), quantized + m * columns, columns);
      }
    }
  });
}

// Rows per block of an int8 Linear's product: at most about kProductBlockBytes of float32 product (it stays in
// the core's L2 from the GEMM to the epilogue), at most an even share of the rows per thread (every thread gets
// blocks), a multiple of the AMX tiles' 16 rows, and at least 1.
constexpr int64_t kBlockRowMultiple = 16;
constexpr int64_t kProductBlockBytes = int64_t{1} << 20;

int64_t product_block_rows(int64_t rows, int64_t columns) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t share = (rows + threads - 1) / threads;
  const int64_t share_rounded_up = (share + kBlockRowMultiple - 1) / kBlockRowMultiple * kBlockRowMultiple;
  const int64_t in_cache = kProductBlockBytes / std::max<int64_t>(1, columns * sizeof(float)) / kBlockRowMultiple *
                           kBlockRowMultiple;
  return std::max<int64_t>(1, std::min(share_rounded_up, std::max(kBlockRowMultiple, in_cache)));
}

// Rows per block of the AMX GEMM (a weight packed by dtb::int8_amx_pack_weight): one pair of 16-row tiles. Each
// block is computed across all N columns and handed to the epilogue at once, so its two input tiles stay in L1
// while the weight streams from L2, and its float32 product (at most 192 KiB at N = 1536) is still in L1/L2 when
// the epilogue reads it. Measured on the 2-core AMX host (one thread, K x N = 384 x 1536, 384 x 1152 and
// 1536 x 384, M = 182 and 3072): 930-1230 GMAC/s against 690-1120 with blocks of 64 KiB of input rows and 220-1090
// with the oneDNN path's blocks (up to 1 MiB of product).
constexpr int64_t kAmxBlockRows = 32;

// The prepacked int8 weight of an int8 Linear, in one of the two layouts (../op_checks.h Int8WeightFormat):
// oneDNN's (weight [K, N] MkldnnCPU) or dtb::int8_amx_pack_weight's (int8_amx_gemm.h); scale [N] float32, zero
// points [N] (zeros).
struct Int8Weight {
  const at::Tensor& packed;
  const at::Tensor& scale;
  const at::Tensor& zero_points;
  Int8WeightFormat format;
};

// An AMX-packed weight runs on AMX tiles only: the AVX512 kernels, a CPU with AMX-INT8 and the tile registers
// granted by Linux (cpu_amx_int8). Elsewhere such a weight is refused with a message rather than run.
void check_weight_runs_here(Int8WeightFormat format, const char* op) {
  if (format != Int8WeightFormat::kAmx) {
    return;
  }
#if defined(CPU_CAPABILITY_AVX512)
  const bool runs = ::dtb::cpu::cpu_amx_int8();
#else
  const bool runs = false;
#endif
  TORCH_CHECK(runs, op, ": weight is packed by dtb::int8_amx_pack_weight for AMX tiles, which this process cannot "
              "use (it needs the avx512 kernels, a CPU with AMX-INT8 and Linux's permission for the tile registers; "
              "dtb_ext.kernel_info()['cpu_amx_int8'] is False here): pack the weight with onednn::qlinear_prepack");
}

// Calls epilogue(product, first_row, row_count) on blocks of quantized's rows, `product` being the block's
// [row_count, N] float32 GEMM result (int8_matmul, or amx_int8_product for an AMX-packed weight). The blocks are
// split among the threads and each thread runs the GEMM (oneDNN runs it on the calling thread inside a parallel
// region) and then the epilogue of its own blocks, so a block's product goes from one to the other through that
// core's cache and the [M, N] product is never in memory. At batch 32 that product was a fresh 15-63 MB allocation
// on every call, each of its pages faulted in by the GEMM and read back by the epilogue.
template <typename Epilogue>
void for_each_product_block(const at::Tensor& quantized, const Int8Weight& weight, const Epilogue& epilogue) {
  const int64_t rows = quantized.size(0);
  const int64_t columns = weight.scale.size(0);
#if defined(CPU_CAPABILITY_AVX512)
  if (weight.format == Int8WeightFormat::kAmx) {
    const int64_t in_features = quantized.size(1);
    const uint8_t* rows_data = quantized.const_data_ptr<uint8_t>();
    const int8_t* packed = weight.packed.const_data_ptr<int8_t>();
    const float* scale = weight.scale.const_data_ptr<float>();
    // Each thread: its tile configuration, and its scratch (the GEMM's buffers and the product block, reused for
    // each of its blocks and kept for the thread's next call: a fresh block would be page-faulted in each time).
    at::parallel_for(0, (rows + kAmxBlockRows - 1) / kAmxBlockRows, 1, [&](int64_t first, int64_t last) {
      const amx::TileScope tiles;
      AmxInt8Scratch& scratch = amx_int8_scratch(in_features, std::min(kAmxBlockRows, rows) * columns);
      for (int64_t index = first; index < last; ++index) {
        const int64_t begin = index * kAmxBlockRows;
        const int64_t count = std::min(kAmxBlockRows, rows - begin);
        amx_int8_product(rows_data + begin * in_features, count, in_features, packed, columns, scale,
                         scratch.product.data(), scratch);
        epilogue(scratch.product.data(), begin, count);
      }
    });
    return;
  }
#endif
  TORCH_CHECK(weight.format == Int8WeightFormat::kOneDnn, "dtb int8 Linear: an AMX-packed weight reached the ",
              "oneDNN path (check_weight_runs_here should have refused it)");
  const int64_t block = product_block_rows(rows, columns);
  const int64_t blocks = (rows + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t index = first; index < last; ++index) {
      const int64_t begin = index * block;
      const int64_t count = std::min(block, rows - begin);
      const at::Tensor product =
          ::dtb::int8_matmul(quantized.narrow(0, begin, count), weight.packed, weight.scale, weight.zero_points);
      epilogue(product.const_data_ptr<float>(), begin, count);
    }
  });
}

// Calls `body` with a value of the element type (float32 or bfloat16: the inputs are checked before).
template <typename Body>
void dispatch_float_or_bfloat16(at::ScalarType dtype, Body body) {
  if (dtype == at::kBFloat16) {
    body(c10::BFloat16{});
  } else {
    body(float{});
  }
}

// Calls `body` with the Activation as a compile-time constant.
template <typename Body>
void dispatch_activation(Activation activation, Body body) {
  switch (activation) {
    case Activation::kNone:
      body(std::integral_constant<Activation, Activation::kNone>{});
      break;
    case Activation::kGeluErf:
      body(std::integral_constant<Activation, Activation::kGeluErf>{});
      break;
    case Activation::kGeluTanh:
      body(std::integral_constant<Activation, Activation::kGeluTanh>{});
      break;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_rows_cpu(const at::Tensor& x_in,
                                                     const std::optional<at::Tensor>& divisor_in) {
  check_quantize_rows_inputs(x_in, divisor_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0);
  const int64_t columns = x.size(1);
  at::Tensor quantized = at::empty({rows, columns}, x.options().dtype(at::kByte));
  at::Tensor scale = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor divisor;
  if (divisor_in.has_value()) {
    divisor = divisor_in->contiguous();
  }
  const float* divisor_data = divisor.defined() ? divisor.const_data_ptr<float>() : nullptr;
  dispatch_float_or_bfloat16(x.scalar_type(), [&](auto element) {
    using scalar_t = decltype(element);
    quantize_rows_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), divisor_data, quantized.mutable_data_ptr<uint8_t>(),
                                   scale.mutable_data_ptr<float>(), rows, columns);
  });
  return {quantized, scale};
}

at::Tensor dequantize_rows_cpu(const at::Tensor& product_in, const at::Tensor& scale_in,
                               const std::optional<at::Tensor>& bias_in, const std::optional<at::Tensor>& residual_in,
                               c10::string_view activation_name, at::ScalarType dtype) {
  check_dequantize_rows_inputs(product_in, scale_in, bias_in, residual_in, dtype);
  const Activation activation = parse_activation(std::string(activation_name));
  const at::Tensor product = product_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const at::Tensor residual = residual_in.has_value() ? residual_in->contiguous() : at::Tensor();
  const int64_t rows = product.size(0);
  const int64_t columns = product.size(1);
  at::Tensor out = at::empty({rows, columns}, product.options().dtype(dtype));
  const float* bias_data = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  dispatch_float_or_bfloat16(dtype, [&](auto element) {
    using scalar_t = decltype(element);
    const scalar_t* residual_data = residual.defined() ? residual.const_data_ptr<scalar_t>() : nullptr;
    dispatch_activation(activation, [&](auto chosen) {
      dequantize_rows_kernel<scalar_t, decltype(chosen)::value>(
          product.const_data_ptr<float>(), scale.const_data_ptr<float>(), bias_data, residual_data,
          out.mutable_data_ptr<scalar_t>(), rows, columns);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dequantize_quantize_rows_cpu(const at::Tensor& product_in,
                                                                const at::Tensor& scale_in,
                                                                const std::optional<at::Tensor>& bias_in,
                                                                c10::string_view activation_name,
                                                                at::ScalarType dtype,
                                                                const std::optional<at::Tensor>& divisor_in) {
  constexpr const char* op = "dtb::dequantize_quantize_rows";
  check_dequantize_rows_inputs(product_in, scale_in, bias_in, std::nullopt, dtype, op);
  check_divisor(product_in, divisor_in, op);
  const Activation activation = parse_activation(std::string(activation_name));
  const at::Tensor product = product_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const at::Tensor divisor = divisor_in.has_value() ? divisor_in->contiguous() : at::Tensor();
  const int64_t rows = product.size(0);
  const int64_t columns = product.size(1);
  at::Tensor quantized = at::empty({rows, columns}, product.options().dtype(at::kByte));
  at::Tensor quantized_scale = at::empty({rows}, product.options());
  const float* bias_data = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  const float* divisor_data = divisor.defined() ? divisor.const_data_ptr<float>() : nullptr;
  dispatch_float_or_bfloat16(dtype, [&](auto element) {
    using scalar_t = decltype(element);
    dispatch_activation(activation, [&](auto chosen) {
      dequantize_quantize_rows_kernel<scalar_t, decltype(chosen)::value>(
          product.const_data_ptr<float>(), scale.const_data_ptr<float>(), bias_data, divisor_data,
          quantized.mutable_data_ptr<uint8_t>(), quantized_scale.mutable_data_ptr<float>(), rows, columns);
    });
  });
  return {quantized, quantized_scale};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dequantize_layer_norm_rows_cpu(
    const at::Tensor& product_in, const at::Tensor& scale_in, const std::optional<at::Tensor>& bias_in,
    const at::Tensor& residual_in, const std::optional<at::Tensor>& gamma_in,
    const std::optional<at::Tensor>& beta_in, double eps, at::ScalarType dtype, bool quantize,
    const std::optional<at::Tensor>& divisor_in) {
  constexpr const char* op = "dtb::dequantize_layer_norm_rows";
  check_dequantize_rows_inputs(product_in, scale_in, bias_in, residual_in, dtype, op);
  check_layer_norm_parameter(product_in, gamma_in, "weight", dtype, op);
  check_layer_norm_parameter(product_in, beta_in, "bias", dtype, op);
  TORCH_CHECK(eps >= 0.0, op, ": eps must be >= 0, got ", eps);
  check_divisor(product_in, divisor_in, op);
  TORCH_CHECK(quantize || !divisor_in.has_value(), op, ": a divisor is only used with quantize=True");
  const at::Tensor product = product_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor residual = residual_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const at::Tensor gamma = gamma_in.has_value() ? gamma_in->contiguous() : at::Tensor();
  const at::Tensor beta = beta_in.has_value() ? beta_in->contiguous() : at::Tensor();
  const at::Tensor divisor = divisor_in.has_value() ? divisor_in->contiguous() : at::Tensor();
  const int64_t rows = product.size(0);
  const int64_t columns = product.size(1);
  at::Tensor out = at::empty({rows, columns}, product.options().dtype(dtype));
  at::Tensor quantized = at::empty({quantize ? rows : 0, columns}, product.options().dtype(at::kByte));
  at::Tensor quantized_scale = at::empty({quantize ? rows : 0}, product.options());
  dispatch_float_or_bfloat16(dtype, [&](auto element) {
    using scalar_t = decltype(element);
    dequantize_layer_norm_rows_kernel<scalar_t>(
        product.const_data_ptr<float>(), scale.const_data_ptr<float>(),
        bias.defined() ? bias.const_data_ptr<float>() : nullptr, residual.const_data_ptr<scalar_t>(),
        gamma.defined() ? gamma.const_data_ptr<scalar_t>() : nullptr,
        beta.defined() ? beta.const_data_ptr<scalar_t>() : nullptr, static_cast<float>(eps),
        out.mutable_data_ptr<scalar_t>(), divisor.defined() ? divisor.const_data_ptr<float>() : nullptr,
        quantize ? quantized.mutable_data_ptr<uint8_t>() : nullptr,
        quantize ? quantized_scale.mutable_data_ptr<float>() : nullptr, rows, columns);
  });
  return {out, quantized, quantized_scale};
}

at::Tensor int8_linear_cpu(const at::Tensor& quantized_in, const at::Tensor& scale_in, const at::Tensor& weight,
                           const at::Tensor& weight_scale_in, const at::Tensor& weight_zero_points,
                           const std::optional<at::Tensor>& bias_in, const std::optional<at::Tensor>& residual_in,
                           c10::string_view activation_name, at::ScalarType dtype) {
  constexpr const char* op = "dtb::int8_linear";
  const Int8WeightFormat format =
      check_int8_linear_inputs(quantized_in, weight, weight_scale_in, weight_zero_points, op);
  check_weight_runs_here(format, op);
  check_dequantize_rows_inputs(int8_linear_product_shape(quantized_in, weight_scale_in), scale_in, bias_in,
                               residual_in, dtype, op);
  const Activation activation = parse_activation(std::string(activation_name));
  const at::Tensor quantized = quantized_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor weight_scale = weight_scale_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const at::Tensor residual = residual_in.has_value() ? residual_in->contiguous() : at::Tensor();
  const int64_t columns = weight_scale.size(0);
  at::Tensor out = at::empty({quantized.size(0), columns}, scale.options().dtype(dtype));
  const float* scale_data = scale.const_data_ptr<float>();
  const float* bias_data = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  dispatch_float_or_bfloat16(dtype, [&](auto element) {
    using scalar_t = decltype(element);
    const scalar_t* residual_data = residual.defined() ? residual.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    dispatch_activation(activation, [&](auto chosen) {
      for_each_product_block(quantized, {weight, weight_scale, weight_zero_points, format},
                             [&](const float* product, int64_t begin, int64_t count) {
        dequantize_rows_kernel<scalar_t, decltype(chosen)::value>(
            product, scale_data + begin, bias_data,
            residual_data == nullptr ? nullptr : residual_data + begin * columns, out_data + begin * columns, count,
            columns);
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> int8_linear_quantize_cpu(
    const at::Tensor& quantized_in, const at::Tensor& scale_in, const at::Tensor& weight,
    const at::Tensor& weight_scale_in, const at::Tensor& weight_zero_points, const std::optional<at::Tensor>& bias_in,
    c10::string_view activation_name, at::ScalarType dtype, const std::optional<at::Tensor>& divisor_in) {
  constexpr const char* op = "dtb::int8_linear_quantize";
  const Int8WeightFormat format =
      check_int8_linear_inputs(quantized_in, weight, weight_scale_in, weight_zero_points, op);
  check_weight_runs_here(format, op);
  const at::Tensor product_shape = int8_linear_product_shape(quantized_in, weight_scale_in);
  check_dequantize_rows_inputs(product_shape, scale_in, bias_in, std::nullopt, dtype, op);
  check_divisor(product_shape, divisor_in, op);
  const Activation activation = parse_activation(std::string(activation_name));
  const at::Tensor quantized = quantized_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor weight_scale = weight_scale_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const at::Tensor divisor = divisor_in.has_value() ? divisor_in->contiguous() : at::Tensor();
  const int64_t rows = quantized.size(0);
  const int64_t columns = weight_scale.size(0);
  at::Tensor out = at::empty({rows, columns}, quantized.options());
  at::Tensor out_scale = at::empty({rows}, scale.options());
  const float* scale_data = scale.const_data_ptr<float>();
  const float* bias_data = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  const float* divisor_data = divisor.defined() ? divisor.const_data_ptr<float>() : nullptr;
  uint8_t* out_data = out.mutable_data_ptr<uint8_t>();
  float* out_scale_data = out_scale.mutable_data_ptr<float>();
  dispatch_float_or_bfloat16(dtype, [&](auto element) {
    using scalar_t = decltype(element);
    dispatch_activation(activation, [&](auto chosen) {
      for_each_product_block(quantized, {weight, weight_scale, weight_zero_points, format},
                             [&](const float* product, int64_t begin, int64_t count) {
        dequantize_quantize_rows_kernel<scalar_t, decltype(chosen)::value>(
            product, scale_data + begin, bias_data, divisor_data, out_data + begin * columns,
            out_scale_data + begin, count, columns);
      });
    });
  });
  return {out, out_scale};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_linear_layer_norm_cpu(
    const at::Tensor& quantized_in, const at::Tensor& scale_in, const at::Tensor& weight,
    const at::Tensor& weight_scale_in, const at::Tensor& weight_zero_points, const std::optional<at::Tensor>& bias_in,
    const at::Tensor& residual_in, const std::optional<at::Tensor>& gamma_in,
    const std::optional<at::Tensor>& beta_in, double eps, at::ScalarType dtype, bool quantize,
    const std::optional<at::Tensor>& divisor_in) {
  constexpr const char* op = "dtb::int8_linear_layer_norm";
  const Int8WeightFormat format =
      check_int8_linear_inputs(quantized_in, weight, weight_scale_in, weight_zero_points, op);
  check_weight_runs_here(format, op);
  const at::Tensor product_shape = int8_linear_product_shape(quantized_in, weight_scale_in);
  check_dequantize_rows_inputs(product_shape, scale_in, bias_in, residual_in, dtype, op);
  check_layer_norm_parameter(product_shape, gamma_in, "weight", dtype, op);
  check_layer_norm_parameter(product_shape, beta_in, "bias", dtype, op);
  TORCH_CHECK(eps >= 0.0, op, ": eps must be >= 0, got ", eps);
  check_divisor(product_shape, divisor_in, op);
  TORCH_CHECK(quantize || !divisor_in.has_value(), op, ": a divisor is only used with quantize=True");
  const at::Tensor quantized = quantized_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor weight_scale = weight_scale_in.contiguous();
  const at::Tensor residual = residual_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const at::Tensor gamma = gamma_in.has_value() ? gamma_in->contiguous() : at::Tensor();
  const at::Tensor beta = beta_in.has_value() ? beta_in->contiguous() : at::Tensor();
  const at::Tensor divisor = divisor_in.has_value() ? divisor_in->contiguous() : at::Tensor();
  const int64_t rows = quantized.size(0);
  const int64_t columns = weight_scale.size(0);
  at::Tensor out = at::empty({rows, columns}, scale.options().dtype(dtype));
  at::Tensor next = at::empty({quantize ? rows : 0, columns}, quantized.options());
  at::Tensor next_scale = at::empty({quantize ? rows : 0}, scale.options());
  const float* scale_data = scale.const_data_ptr<float>();
  const float* bias_data = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  const float* divisor_data = divisor.defined() ? divisor.const_data_ptr<float>() : nullptr;
  uint8_t* next_data = quantize ? next.mutable_data_ptr<uint8_t>() : nullptr;
  float* next_scale_data = quantize ? next_scale.mutable_data_ptr<float>() : nullptr;
  dispatch_float_or_bfloat16(dtype, [&](auto element) {
    using scalar_t = decltype(element);
    const scalar_t* residual_data = residual.const_data_ptr<scalar_t>();
    const scalar_t* gamma_data = gamma.defined() ? gamma.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* beta_data = beta.defined() ? beta.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    for_each_product_block(quantized, {weight, weight_scale, weight_zero_points, format},
                           [&](const float* product, int64_t begin, int64_t count) {
      dequantize_layer_norm_rows_kernel<scalar_t>(
          product, scale_data + begin, bias_data, residual_data + begin * columns, gamma_data, beta_data,
          static_cast<float>(eps), out_data + begin * columns, divisor_data,
          next_data == nullptr ? nullptr : next_data + begin * columns,
          next_scale_data == nullptr ? nullptr : next_scale_data + begin, count, columns);
    });
  });
  return {out, next, next_scale};
}

}  // namespace dtb::CPU_CAPABILITY
