// CUDA kernel of dtb::select_and_gather. Grid (B, row tiles): every block of example b builds the L selection
// keys (selection_key.h) in shared memory, bitonic-sorts them descending, keeps the first keep[b], sorts those
// positions ascending (second bitonic sort), then gathers its tile of output rows. Recomputing the selection per
// tile (a few microseconds for L <= 4096) lets batch 1 spread the gather over many blocks.
//
// The binding checks the keep counts on the host except while the stream is captured into a CUDA graph; for that
// case the kernel guards itself: an example whose count is outside [1, max_keep] is poisoned (kernels.h).
#include <cuda_runtime.h>

#include <cstdint>

#include "../selection_key.h"
#include "kernels.h"
#include "row_copy.h"

namespace dtb {
namespace cuda {
namespace {

constexpr int kThreads = 512;
constexpr int64_t kRowsPerBlock = 32;

__device__ void bitonic_sort(uint64_t* keys, int64_t count, bool descending) {
  for (int64_t size = 2; size <= count; size <<= 1) {
    for (int64_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
        const int64_t partner = i ^ stride;
        if (partner > i) {
          const bool ascending_run = ((i & size) == 0) != descending;
          const uint64_t a = keys[i];
          const uint64_t b = keys[partner];
          if ((a > b) == ascending_run) {
            keys[i] = b;
            keys[partner] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

// Output rows [row_begin, row_end) of example b for an invalid keep count: every byte of kept_hidden kPoisonByte
// (NaN), marked valid, at positions row_begin.. (distinct and in range), so that the NaN rows reach whatever
// restores or attends to them instead of passing for padding.
template <typename unit_t>
__device__ void poison_rows(unit_t* kept_hidden, bool* kept_valid, int64_t* positions, int64_t b, int64_t row_begin,
                            int64_t row_end, int64_t max_keep, int64_t units_per_row) {
  for (int64_t j = row_begin + threadIdx.x; j < row_end; j += blockDim.x) {
    positions[b * max_keep + j] = j;
    kept_valid[b * max_keep + j] = true;
  }
  const unit_t poison = filled_unit<unit_t>(kPoisonByte);
  const int64_t units = (row_end - row_begin) * units_per_row;
  for (int64_t i = threadIdx.x; i < units; i += blockDim.x) {
    kept_hidden[(b * max_keep + row_begin) * units_per_row + i] = poison;
  }
}

template <typename unit_t>
__global__ void select_and_gather_kernel(const unit_t* __restrict__ hidden, const float* __restrict__ significance,
                                         const bool* __restrict__ valid, const int64_t* __restrict__ keep,
                                         bool keep_first, unit_t* __restrict__ kept_hidden,
                                         bool* __restrict__ kept_valid, int64_t* __restrict__ positions,
                                         int64_t length, int64_t padded_length, int64_t max_keep,
                                         int64_t units_per_row) {
  extern __shared__ uint64_t keys[];  // [padded_length]
  const int64_t b = blockIdx.x;
  const float* sig_row = significance + b * length;
  const bool* valid_row = valid + b * length;
  const int64_t count = keep[b];
  const int64_t row_begin = blockIdx.y * kRowsPerBlock;
  const int64_t row_end = row_begin + kRowsPerBlock < max_keep ? row_begin + kRowsPerBlock : max_keep;
  if (count < 1 || count > max_keep) {
    // Uniform across the block (one count per example), so no thread is left waiting at a barrier.
    poison_rows(kept_hidden, kept_valid, positions, b, row_begin, row_end, max_keep, units_per_row);
    return;
  }
  for (int64_t i = threadIdx.x; i < padded_length; i += blockDim.x) {
    // Key 0 sorts below every real key (their high half is at least ordered_bits(-inf) > 0).
    keys[i] = i < length ? selection_key(sig_row[i], valid_row[i], keep_first && i == 0, i, length) : 0;
  }
  __syncthreads();
  bitonic_sort(keys, padded_length, /*descending=*/true);

  for (int64_t i = threadIdx.x; i < padded_length; i += blockDim.x) {
    keys[i] = i < count ? static_cast<uint64_t>(position_of_key(keys[i], length)) : UINT64_MAX;
  }
  __syncthreads();
  bitonic_sort(keys, padded_length, /*descending=*/false);

  for (int64_t j = row_begin + threadIdx.x; j < row_end; j += blockDim.x) {
    const bool kept = j < count;
    const int64_t position = kept ? static_cast<int64_t>(keys[j]) : -1;
    positions[b * max_keep + j] = position;
    kept_valid[b * max_keep + j] = kept && valid_row[position];
  }
  const int64_t units = (row_end - row_begin) * units_per_row;
  for (int64_t i = threadIdx.x; i < units; i += blockDim.x) {
    const int64_t j = row_begin + i / units_per_row;
    const int64_t unit = i % units_per_row;
    unit_t value = filled_unit<unit_t>(0);
    if (j < count) {
      value = hidden[(b * length + static_cast<int64_t>(keys[j])) * units_per_row + unit];
    }
    kept_hidden[(b * max_keep + j) * units_per_row + unit] = value;
  }
}

template <int kUnit>
cudaError_t launch(const void* hidden, const float* significance, const bool* valid, const int64_t* keep,
                   bool keep_first, void* kept_hidden, bool* kept_valid, int64_t* positions, int64_t batch,
                   int64_t length, int64_t max_keep, int64_t row_bytes, cudaStream_t stream) {
  using unit_t = typename CopyUnit<kUnit>::type;
  if (batch > kMaxGridBlocks) {
    return cudaErrorInvalidConfiguration;  // the binding checks first, with a message
  }
  int64_t padded_length = 1;
  while (padded_length < length) {
    padded_length <<= 1;
  }
  const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>((max_keep + kRowsPerBlock - 1) / kRowsPerBlock));
  select_and_gather_kernel<unit_t><<<grid, kThreads, padded_length * sizeof(uint64_t), stream>>>(
      static_cast<const unit_t*>(hidden), significance, valid, keep, keep_first, static_cast<unit_t*>(kept_hidden),
      kept_valid, positions, length, padded_length, max_keep, row_bytes / kUnit);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_select_and_gather(const void* hidden, const float* significance, const bool* valid,
                                     const int64_t* keep, bool keep_first, void* kept_hidden, bool* kept_valid,
                                     int64_t* positions, int64_t batch, int64_t length, int64_t max_keep,
                                     int64_t row_bytes, cudaStream_t stream) {
  if (batch == 0 || max_keep == 0) {
    return cudaSuccess;
  }
  switch (copy_unit_bytes(row_bytes, hidden, kept_hidden)) {
    case 16:
      return launch<16>(hidden, significance, valid, keep, keep_first, kept_hidden, kept_valid, positions, batch,
                        length, max_keep, row_bytes, stream);
    case 8:
      return launch<8>(hidden, significance, valid, keep, keep_first, kept_hidden, kept_valid, positions, batch,
                       length, max_keep, row_bytes, stream);
    case 4:
      return launch<4>(hidden, significance, valid, keep, keep_first, kept_hidden, kept_valid, positions, batch,
                       length, max_keep, row_bytes, stream);
    case 2:
      return launch<2>(hidden, significance, valid, keep, keep_first, kept_hidden, kept_valid, positions, batch,
                       length, max_keep, row_bytes, stream);
    default:
      return launch<1>(hidden, significance, valid, keep, keep_first, kept_hidden, kept_valid, positions, batch,
                       length, max_keep, row_bytes, stream);
  }
}

}  // namespace cuda
}  // namespace dtb
