// CUDA kernels of dtb::restore, in two steps on one stream:
//   1. claims: every slot with a position claims that output row (an atomic compare-and-swap on claims[b, p]);
//      a row claimed twice is marked kDuplicateClaim, and the example's flags record duplicate or out-of-range
//      positions. This is how duplicates are found without sorting and without the host.
//   2. rows: every output row is written once, from the src row of its claiming slot or from base (no clone of
//      base first), and every row of a flagged example is filled with kPoisonByte (NaN).
// The binding reads the flags between the two steps (raising the CPU op's errors) except while the stream is
// captured into a CUDA graph, where reading them would need a host sync; there the poisoned rows are the error.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"
#include "row_copy.h"

namespace dtb {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kUnclaimed = -1;
constexpr int64_t kDuplicateClaim = -2;

__global__ void claim_positions_kernel(const int64_t* __restrict__ positions, int64_t* __restrict__ claims,
                                       int* __restrict__ flags, int64_t length, int64_t slots, int64_t total_slots) {
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total_slots;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t position = positions[index];
    if (position == -1) {
      continue;
    }
    const int64_t b = index / slots;
    if (position < -1 || position >= length) {
      atomicOr(&flags[b], kRestoreOutOfRange);
      continue;
    }
    auto* claim = reinterpret_cast<unsigned long long*>(claims + b * length + position);
    const auto unclaimed = static_cast<unsigned long long>(kUnclaimed);
    const unsigned long long previous = atomicCAS(claim, unclaimed, static_cast<unsigned long long>(index % slots));
    if (previous != unclaimed) {
      // Only the first claimant's swap succeeds; every later one marks the row, so it ends kDuplicateClaim
      // whatever the order.
      atomicExch(claim, static_cast<unsigned long long>(kDuplicateClaim));
      atomicOr(&flags[b], kRestoreDuplicate);
    }
  }
}

template <typename unit_t>
__global__ void restore_rows_kernel(unit_t* __restrict__ out, const unit_t* __restrict__ base,
                                    const unit_t* __restrict__ src, const int64_t* __restrict__ claims,
                                    const int* __restrict__ flags, int64_t length, int64_t slots,
                                    int64_t units_per_row, int64_t total_units) {
  const unit_t poison = filled_unit<unit_t>(kPoisonByte);
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total_units;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = index / units_per_row;  // b * length + position
    const int64_t b = row / length;
    if (flags[b] != 0) {
      out[index] = poison;
      continue;
    }
    const int64_t slot = claims[row];  // never kDuplicateClaim here: a duplicate flags its example
    out[index] = slot == kUnclaimed ? base[index] : src[(b * slots + slot) * units_per_row + index % units_per_row];
  }
}

template <int kUnit>
cudaError_t launch_rows(void* out, const void* base, const void* src, const int64_t* claims, const int* flags,
                        int64_t batch, int64_t length, int64_t slots, int64_t row_bytes, cudaStream_t stream) {
  using unit_t = typename CopyUnit<kUnit>::type;
  const int64_t units_per_row = row_bytes / kUnit;
  const int64_t total_units = batch * length * units_per_row;
  restore_rows_kernel<unit_t><<<grid_stride_blocks(total_units, kThreads), kThreads, 0, stream>>>(
      static_cast<unit_t*>(out), static_cast<const unit_t*>(base), static_cast<const unit_t*>(src), claims, flags,
      length, slots, units_per_row, total_units);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_restore_claims(const int64_t* positions, int64_t* claims, int* flags, int64_t batch,
                                  int64_t length, int64_t slots, cudaStream_t stream) {
  const int64_t total_slots = batch * slots;
  if (total_slots == 0) {
    return cudaSuccess;
  }
  claim_positions_kernel<<<grid_stride_blocks(total_slots, kThreads), kThreads, 0, stream>>>(
      positions, claims, flags, length, slots, total_slots);
  return cudaGetLastError();
}

cudaError_t launch_restore_rows(void* out, const void* base, const void* src, const int64_t* claims,
                                const int* flags, int64_t batch, int64_t length, int64_t slots, int64_t row_bytes,
                                cudaStream_t stream) {
  if (batch == 0 || length == 0 || row_bytes == 0) {
    return cudaSuccess;
  }
  switch (copy_unit_bytes(row_bytes, out, base, src)) {
    case 16:
      return launch_rows<16>(out, base, src, claims, flags, batch, length, slots, row_bytes, stream);
    case 8:
      return launch_rows<8>(out, base, src, claims, flags, batch, length, slots, row_bytes, stream);
    case 4:
      return launch_rows<4>(out, base, src, claims, flags, batch, length, slots, row_bytes, stream);
    case 2:
      return launch_rows<2>(out, base, src, claims, flags, batch, length, slots, row_bytes, stream);
    default:
      return launch_rows<1>(out, base, src, claims, flags, batch, length, slots, row_bytes, stream);
  }
}

}  // namespace cuda
}  // namespace dtb
