// CUDA kernel of dtb::restore: `out` already holds a copy of base (the binding clones it on the same stream);
// this kernel writes each src row with a valid position over it, one copy unit per thread.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"
#include "row_copy.h"

namespace dtb {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename unit_t>
__global__ void restore_kernel(unit_t* __restrict__ out, const unit_t* __restrict__ src,
                               const int64_t* __restrict__ positions, int64_t length, int64_t slots,
                               int64_t units_per_row, int64_t total_units) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total_units) {
    return;
  }
  const int64_t slot_row = index / units_per_row;  // b * slots + k
  const int64_t position = positions[slot_row];
  if (position < 0) {
    return;
  }
  const int64_t b = slot_row / slots;
  out[(b * length + position) * units_per_row + index % units_per_row] = src[index];
}

template <int kUnit>
cudaError_t launch(void* out, const void* src, const int64_t* positions, int64_t batch, int64_t length,
                   int64_t slots, int64_t row_bytes, cudaStream_t stream) {
  using unit_t = typename CopyUnit<kUnit>::type;
  const int64_t units_per_row = row_bytes / kUnit;
  const int64_t total_units = batch * slots * units_per_row;
  const int64_t blocks = (total_units + kThreads - 1) / kThreads;
  restore_kernel<unit_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<unit_t*>(out), static_cast<const unit_t*>(src), positions, length, slots, units_per_row,
      total_units);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_restore(void* out, const void* src, const int64_t* positions, int64_t batch, int64_t length,
                           int64_t slots, int64_t row_bytes, cudaStream_t stream) {
  if (batch == 0 || slots == 0 || row_bytes == 0) {
    return cudaSuccess;
  }
  switch (copy_unit_bytes(row_bytes, out, src)) {
    case 16:
      return launch<16>(out, src, positions, batch, length, slots, row_bytes, stream);
    case 8:
      return launch<8>(out, src, positions, batch, length, slots, row_bytes, stream);
    case 4:
      return launch<4>(out, src, positions, batch, length, slots, row_bytes, stream);
    case 2:
      return launch<2>(out, src, positions, batch, length, slots, row_bytes, stream);
    default:
      return launch<1>(out, src, positions, batch, length, slots, row_bytes, stream);
  }
}

}  // namespace cuda
}  // namespace dtb
