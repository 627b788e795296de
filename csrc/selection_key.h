// The selection order of dtb::select_and_gather as one 64-bit key per token, shared by the CPU and CUDA kernels
// (plain C++, no torch includes, so nvcc compiles it alone). A larger key means selected earlier:
//   high 32 bits: the significance mapped to an unsigned integer with the same order (padding -> -inf,
//                 position 0 with keep_first -> +inf, NaN above everything, -0.0 equal to +0.0),
//   low 32 bits:  L - 1 - position, so equal significances break toward the lower position.
// This is the order of dtb_ext.reference.selection_order (a stable descending sort).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DTB_HOST_DEVICE __host__ __device__
#else
#define DTB_HOST_DEVICE
#endif

namespace dtb {

DTB_HOST_DEVICE inline uint32_t ordered_bits(float value) {
  if (value != value) {
    return 0xFFFFFFFFu;  // NaN: a descending torch.sort puts it first
  }
  if (value == 0.0f) {
    value = 0.0f;  // -0.0 ties with +0.0
  }
  uint32_t bits;
  memcpy(&bits, &value, sizeof(bits));
  // Negative floats order reversed by their bits: flip them all; positive ones: set the sign bit.
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

DTB_HOST_DEVICE inline uint64_t selection_key(float significance, bool is_valid, bool forced_first, int64_t position,
                                             int64_t length) {
  const float infinity = __builtin_huge_valf();
  const float value = forced_first ? infinity : (is_valid ? significance : -infinity);
  return (static_cast<uint64_t>(ordered_bits(value)) << 32) | static_cast<uint64_t>(length - 1 - position);
}

DTB_HOST_DEVICE inline int64_t position_of_key(uint64_t key, int64_t length) {
  return length - 1 - static_cast<int64_t>(key & 0xFFFFFFFFu);
}

}  // namespace dtb
