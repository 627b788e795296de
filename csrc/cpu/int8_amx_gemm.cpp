// dtb::int8_amx_pack_weight and the int8 Linear ops' GEMM on AMX tiles: see int8_amx_gemm.h for the packed layout.
//
// Why: oneDNN's int8 GEMM (onednn::qlinear_pointwise through the dispatcher) costs about 33 us per call whatever
// the row count (primitive lookup, ideep wrappers), and the int8 Linear ops call it once per block of rows, 24 calls
// per MiniLM forward at batch 1 (about 0.8 ms of 7.5 ms) and ~470 at batch 32. Here each thread runs TDPBUSD on its
// own blocks of rows directly: per 32 x 32 block of the product, two 16-row tiles of the uint8 rows times two
// 16-column tiles of the packed weight, 64 input features per step, into four int32 accumulator tiles; then the
// int32 sums less the zero-point correction, converted to float32 and times the channels' scales, into the thread's
// product block, which the op's epilogue reads while it is in cache (int8_rows.cpp, for_each_product_block).
//
// The pack op is plain code in every instruction-set copy (a layout); the GEMM exists in the AVX512 copy only,
// behind AMX target attributes, and runs only where ../cpu_capability.h cpu_amx_int8() says the CPU and the
// operating system allow it.
#include "int8_amx_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>

#include "amx.h"
#endif

#include "../cpu_kernels.h"
#include "../op_checks.h"

// Compiled once per instruction set, into dtb::DEFAULT, dtb::AVX2 and dtb::AVX512 (see ../cpu_capability.h).
namespace dtb::CPU_CAPABILITY {
namespace {

constexpr int64_t kColumns = 16;      // output channels of one B tile
constexpr int64_t kGroup = 4;         // input features of one VNNI group (one int32 lane of a tile row)
constexpr int64_t kDepth = kAmxPackedDepth;  // input features of one TDPBUSD step (64 bytes of a tile row)
constexpr int32_t kZeroPoint = 128;   // of the uint8 rows (dtb::quantize_rows)

int64_t packed_row_bytes(int64_t in_features) { return kColumns * in_features + kAmxPackedCorrectionBytes; }

}  // namespace

at::Tensor int8_amx_pack_weight_cpu(const at::Tensor& weight_in) {
  check_int8_amx_pack_weight_input(weight_in);
  const at::Tensor weight = weight_in.contiguous();
  const int64_t out_features = weight.size(0);
  const int64_t in_features = weight.size(1);
  const int64_t row_bytes = packed_row_bytes(in_features);
  at::Tensor packed = at::empty({out_features / kColumns, row_bytes}, weight.options());
  const int8_t* source = weight.const_data_ptr<int8_t>();
  int8_t* target = packed.mutable_data_ptr<int8_t>();
  at::parallel_for(0, out_features / kColumns, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      int8_t* row = target + block * row_bytes;
      for (int64_t c = 0; c < kColumns; ++c) {
        const int8_t* channel = source + (block * kColumns + c) * in_features;
        int32_t sum = 0;
        for (int64_t k = 0; k < in_features; ++k) {
          row[(k / kGroup) * (kColumns * kGroup) + c * kGroup + k % kGroup] = channel[k];
          sum += channel[k];
        }
        const int32_t correction = kZeroPoint * sum;
        std::memcpy(row + kColumns * in_features + c * sizeof(int32_t), &correction, sizeof(int32_t));
      }
    }
  });
  return packed;
}

#if defined(CPU_CAPABILITY_AVX512)

namespace {

constexpr int64_t kTileBytes = amx::kTileBytes;
constexpr int64_t kRows = amx::kTileRows;              // rows of one A tile
constexpr int64_t kBTileBytes = kRows * kTileBytes;    // one 64-deep slice of a 16-column block: 1 KiB
constexpr int64_t kSumsStride = 2 * kColumns;          // int32 per row of the scratch's 32 x 32 sums

// Tile registers (the shared configuration, amx.h: all 16 rows x 64 bytes): 0-3 the int32 sums of row tile r and
// column tile c in register 2 r + c, 4 and 5 the two row tiles (A, uint8), 6 and 7 the two column tiles (B, int8).
// sums (row stride kSumsStride) receives the kRowTiles * 16 x kColumnTiles * 16 block.
template <int kRowTiles, int kColumnTiles>
DTB_AMX_INT8_TARGET void tile_sums(const uint8_t* a0, const uint8_t* a1, int64_t a_stride, const int8_t* b0,
                                   const int8_t* b1, int64_t steps, int32_t* sums) {
  _tile_zero(0);
  if constexpr (kColumnTiles == 2) {
    _tile_zero(1);
  }
  if constexpr (kRowTiles == 2) {
    _tile_zero(2);
    if constexpr (kColumnTiles == 2) {
      _tile_zero(3);
    }
  }
  for (int64_t step = 0; step < steps; ++step) {
    _tile_loadd(4, a0 + step * kTileBytes, a_stride);
    _tile_loadd(6, b0 + step * kBTileBytes, kTileBytes);
    _tile_dpbusd(0, 4, 6);
    if constexpr (kColumnTiles == 2) {
      _tile_loadd(7, b1 + step * kBTileBytes, kTileBytes);
      _tile_dpbusd(1, 4, 7);
    }
    if constexpr (kRowTiles == 2) {
      _tile_loadd(5, a1 + step * kTileBytes, a_stride);
      _tile_dpbusd(2, 5, 6);
      if constexpr (kColumnTiles == 2) {
        _tile_dpbusd(3, 5, 7);
      }
    }
  }
  constexpr int64_t stride_bytes = kSumsStride * sizeof(int32_t);
  _tile_stored(0, sums, stride_bytes);
  if constexpr (kColumnTiles == 2) {
    _tile_stored(1, sums + kColumns, stride_bytes);
  }
  if constexpr (kRowTiles == 2) {
    _tile_stored(2, sums + kRows * kSumsStride, stride_bytes);
    if constexpr (kColumnTiles == 2) {
      _tile_stored(3, sums + kRows * kSumsStride + kColumns, stride_bytes);
    }
  }
}

// out[r * out_stride + 16 c + j] = float(sums[r * kSumsStride + 16 c + j] - correction_c[j]) * scale[16 c + j] for
// r < rows, c < column_tiles: one int32 -> float32 conversion and one float32 product, each rounded to nearest even
// (the MXCSR default), as oneDNN's GEMM computes its float32 output from its int32 accumulators.
void store_products(const int32_t* sums, int64_t rows, int column_tiles, const int8_t* const* corrections,
                    const float* scale, float* out, int64_t out_stride) {
  __m512i correction[2];
  __m512 channel_scale[2];
  for (int c = 0; c < column_tiles; ++c) {
    correction[c] = _mm512_loadu_si512(corrections[c]);
    channel_scale[c] = _mm512_loadu_ps(scale + c * kColumns);
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < column_tiles; ++c) {
      const __m512i exact = _mm512_sub_epi32(_mm512_loadu_si512(sums + r * kSumsStride + c * kColumns),
                                             correction[c]);
      _mm512_storeu_ps(out + r * out_stride + c * kColumns,
                       _mm512_mul_ps(_mm512_cvtepi32_ps(exact), channel_scale[c]));
    }
  }
}

}  // namespace

AmxInt8Scratch& amx_int8_scratch(int64_t in_features, int64_t product_elements) {
  thread_local AmxInt8Scratch scratch;
  const auto padded = static_cast<size_t>(kRows * in_features);
  if (scratch.padded_rows.size() < padded) {
    scratch.padded_rows.resize(padded);
  }
  if (scratch.product.size() < static_cast<size_t>(product_elements)) {
    scratch.product.resize(static_cast<size_t>(product_elements));
  }
  return scratch;
}

void amx_int8_product(const uint8_t* a, int64_t rows, int64_t in_features, const int8_t* packed,
                      int64_t out_features, const float* weight_scale, float* out, AmxInt8Scratch& scratch) {
  if (rows <= 0) {
    return;
  }
  const int64_t row_bytes = packed_row_bytes(in_features);
  const int64_t steps = in_features / kDepth;
  const int64_t column_tiles = out_features / kColumns;
  // Whole 16-row tiles are read in place; the rows of a last partial tile are copied into the scratch's zeroed
  // tile, so no tile load reads past the input.
  const int64_t whole_tiles = rows / kRows;
  const int64_t tail = rows % kRows;
  const int64_t row_tiles = whole_tiles + (tail > 0 ? 1 : 0);
  if (tail > 0) {
    uint8_t* padded = scratch.padded_rows.data();
    std::memcpy(padded, a + whole_tiles * kRows * in_features, static_cast<size_t>(tail * in_features));
    std::memset(padded + tail * in_features, 0, static_cast<size_t>((kRows - tail) * in_features));
  }
  const auto tile_rows = [&](int64_t tile) {
    return tile < whole_tiles ? a + tile * kRows * in_features : scratch.padded_rows.data();
  };
  for (int64_t ct = 0; ct < column_tiles; ct += 2) {
    const int column_pair = ct + 1 < column_tiles ? 2 : 1;
    const int8_t* b0 = packed + ct * row_bytes;
    const int8_t* b1 = column_pair == 2 ? b0 + row_bytes : b0;
    const int8_t* corrections[2] = {b0 + kColumns * in_features, b1 + kColumns * in_features};
    for (int64_t rt = 0; rt < row_tiles; rt += 2) {
      const bool row_pair = rt + 1 < row_tiles;
      const uint8_t* a0 = tile_rows(rt);
      const uint8_t* a1 = row_pair ? tile_rows(rt + 1) : a0;
      if (row_pair && column_pair == 2) {
        tile_sums<2, 2>(a0, a1, in_features, b0, b1, steps, scratch.sums);
      } else if (row_pair) {
        tile_sums<2, 1>(a0, a1, in_features, b0, b1, steps, scratch.sums);
      } else if (column_pair == 2) {
        tile_sums<1, 2>(a0, a1, in_features, b0, b1, steps, scratch.sums);
      } else {
        tile_sums<1, 1>(a0, a1, in_features, b0, b1, steps, scratch.sums);
      }
      const int64_t first_row = rt * kRows;
      store_products(scratch.sums, std::min<int64_t>(2 * kRows, rows - first_row), column_pair, corrections,
                     weight_scale + ct * kColumns, out + first_row * out_features + ct * kColumns, out_features);
    }
  }
}

#endif  // CPU_CAPABILITY_AVX512

}  // namespace dtb::CPU_CAPABILITY
