// Copying hidden-state rows as raw bytes in the widest unit that the row size and pointers allow, so that the
// gather and scatter kernels need no per-dtype instantiation. Plain CUDA, no torch includes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dtb {
namespace cuda {

// Bytes per copy unit (16, 8, 4, 2 or 1) that divides the row size and aligns every pointer.
template <typename... Pointers>
inline int copy_unit_bytes(int64_t row_bytes, const Pointers*... pointers) {
  const uintptr_t alignment = (reinterpret_cast<uintptr_t>(pointers) | ...);
  for (int unit = 16; unit > 1; unit /= 2) {
    if (row_bytes % unit == 0 && alignment % unit == 0) {
      return unit;
    }
  }
  return 1;
}

template <int kUnit>
struct CopyUnit;
template <>
struct CopyUnit<16> {
  using type = uint4;
};
template <>
struct CopyUnit<8> {
  using type = uint2;
};
template <>
struct CopyUnit<4> {
  using type = uint32_t;
};
template <>
struct CopyUnit<2> {
  using type = uint16_t;
};
template <>
struct CopyUnit<1> {
  using type = uint8_t;
};

// The byte the kernels fill rows with when their inputs were invalid (checks skipped during CUDA-graph capture):
// all-ones bytes are a NaN in every IEEE floating format (float16, bfloat16, float32, float64).
constexpr int kPoisonByte = 0xFF;

// A copy unit with every byte equal to `byte`.
template <typename unit_t>
__device__ inline unit_t filled_unit(int byte) {
  unit_t value;
  memset(&value, byte, sizeof(unit_t));
  return value;
}

// Blocks for a grid-stride loop over `items` with `threads` per block: enough to fill any current GPU, never
// more than the loop needs, and far below the gridDim.x limit whatever `items` is.
inline unsigned grid_stride_blocks(int64_t items, int threads) {
  constexpr int64_t kMaxBlocks = int64_t{1} << 16;
  const int64_t needed = (items + threads - 1) / threads;
  return static_cast<unsigned>(needed < kMaxBlocks ? needed : kMaxBlocks);
}

}  // namespace cuda
}  // namespace dtb
