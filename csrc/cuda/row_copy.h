// Copying hidden-state rows as raw bytes in the widest unit that the row size and pointers allow, so that the
// gather and scatter kernels need no per-dtype instantiation. Plain CUDA, no torch includes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dtb {
namespace cuda {

// Bytes per copy unit (16, 8, 4, 2 or 1) that divides the row size and aligns every pointer.
inline int copy_unit_bytes(int64_t row_bytes, const void* a, const void* b) {
  const uintptr_t alignment = reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b);
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

template <typename unit_t>
__device__ inline unit_t zero_unit() {
  unit_t value;
  memset(&value, 0, sizeof(unit_t));
  return value;
}

}  // namespace cuda
}  // namespace dtb
