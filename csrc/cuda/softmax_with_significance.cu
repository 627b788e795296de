// CUDA kernel of dtb::softmax_with_significance. One block per (example, head, tile of query rows); one warp per
// row: an online max/sum pass over the scores, then one pass that writes the probabilities and adds them to the
// warp's significance row in shared memory (lanes own columns, so no atomics). The block sums its warps' rows into
// one scratch row, and a second small kernel sums the scratch rows over heads and tiles in a fixed order, so the
// significance is deterministic.
//
// Non-finite scores follow the CPU op: a valid key scoring NaN or +inf poisons its row (softmax is undefined
// there), which then reads NaN at every key before the example's last valid key and 0 after it, and adds NaN to
// the significance of those keys when the query is valid. Masked keys never poison a row, whatever their score;
// -inf at a valid key is an ordinary score (probability 0).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"

namespace dtb {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxWarpsPerBlock = 4;
constexpr int kRowsPerWarp = 8;
constexpr int64_t kSharedBytes = 48 * 1024;

template <typename T>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};

__device__ inline float to_acc(float x) { return x; }
__device__ inline double to_acc(double x) { return x; }
__device__ inline float to_acc(__half x) { return __half2float(x); }
__device__ inline float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ inline T from_acc(float x);
template <>
__device__ inline float from_acc<float>(float x) { return x; }
template <>
__device__ inline __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ inline __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <typename T>
__device__ inline T from_acc(double x) { return x; }

__device__ inline float exp_acc(float x) { return expf(x); }
__device__ inline double exp_acc(double x) { return exp(x); }

// Merges (max, sum of exp(x - max)) pairs; a pair with max = -inf holds no keys. Only finite scores enter these
// pairs (NaN and +inf poison the row before they get here), so max = -inf is exactly "no keys" and sum is finite.
template <typename acc_t>
__device__ inline void merge(acc_t& max, acc_t& sum, acc_t other_max, acc_t other_sum) {
  if (other_max == -INFINITY) {
    return;
  }
  if (max == -INFINITY) {
    max = other_max;
    sum = other_sum;
    return;
  }
  const acc_t new_max = other_max > max ? other_max : max;
  sum = sum * exp_acc(max - new_max) + other_sum * exp_acc(other_max - new_max);
  max = new_max;
}

int warps_per_block(int64_t length) {
  const int64_t fit = kSharedBytes / (length * static_cast<int64_t>(sizeof(float)) + length);
  return static_cast<int>(fit < kMaxWarpsPerBlock ? fit : kMaxWarpsPerBlock);
}

int64_t tiles_per_head(int64_t length) {
  const int64_t rows_per_block = static_cast<int64_t>(warps_per_block(length)) * kRowsPerWarp;
  return (length + rows_per_block - 1) / rows_per_block;
}

template <typename T>
__global__ void softmax_with_significance_kernel(const T* __restrict__ scores, const bool* __restrict__ valid,
                                                 T* __restrict__ probs, float* __restrict__ scratch, int64_t heads,
                                                 int64_t length, int64_t tiles) {
  using acc_t = typename Accumulate<T>::type;
  extern __shared__ float shared[];
  const int warps = blockDim.x / kWarp;
  float* warp_significance = shared;                                         // [warps, L]
  bool* key_valid = reinterpret_cast<bool*>(shared + warps * length);        // [L]
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int64_t task = blockIdx.x;
  const int64_t tile = task % tiles;
  const int64_t b = task / (tiles * heads);
  const int64_t h = (task / tiles) % heads;

  // key_end: one past the example's last valid key, the extent of a poisoned row's NaNs (as on CPU).
  __shared__ int key_end;
  if (threadIdx.x == 0) {
    key_end = 0;
  }
  __syncthreads();
  int last_valid_end = 0;
  for (int64_t k = threadIdx.x; k < length; k += blockDim.x) {
    const bool is_valid = valid[b * length + k];
    key_valid[k] = is_valid;
    if (is_valid) {
      last_valid_end = static_cast<int>(k) + 1;
    }
  }
  atomicMax(&key_end, last_valid_end);
  for (int64_t i = threadIdx.x; i < warps * length; i += blockDim.x) {
    warp_significance[i] = 0.0f;
  }
  __syncthreads();

  float* my_significance = warp_significance + warp * length;
  const int64_t rows_per_block = static_cast<int64_t>(warps) * kRowsPerWarp;
  const int64_t q_begin = tile * rows_per_block + warp * kRowsPerWarp;
  for (int64_t q = q_begin; q < q_begin + kRowsPerWarp && q < length; ++q) {
    const int64_t offset = ((b * heads + h) * length + q) * length;
    const T* row = scores + offset;
    acc_t max = -INFINITY;
    acc_t sum = 0;
    bool poisoned = false;
    for (int64_t k = lane; k < length; k += kWarp) {
      if (!key_valid[k]) {
        continue;
      }
      const acc_t x = to_acc(row[k]);
      if (!(x < acc_t(INFINITY))) {  // NaN or +inf
        poisoned = true;
        continue;
      }
      if (x == -INFINITY) {
        continue;
      }
      // Online softmax: rescale the running sum when the maximum grows; one exp per key.
      if (x > max) {
        sum = sum * exp_acc(max - x) + acc_t(1);
        max = x;
      } else {
        sum += exp_acc(x - max);
      }
    }
    for (int shift = kWarp / 2; shift > 0; shift /= 2) {
      const acc_t other_max = __shfl_xor_sync(0xFFFFFFFFu, max, shift);
      const acc_t other_sum = __shfl_xor_sync(0xFFFFFFFFu, sum, shift);
      merge<acc_t>(max, sum, other_max, other_sum);
    }
    const bool query_valid = key_valid[q];
    T* out = probs + offset;
    if (__any_sync(0xFFFFFFFFu, poisoned)) {
      for (int64_t k = lane; k < length; k += kWarp) {
        const acc_t p = k < key_end ? acc_t(NAN) : acc_t(0);
        out[k] = from_acc<T>(p);
        if (query_valid) {
          my_significance[k] += static_cast<float>(p);
        }
      }
      continue;
    }
    if (max == -INFINITY) {
      // No valid key with a finite score: the row is all zeros rather than 0/0.
      for (int64_t k = lane; k < length; k += kWarp) {
        out[k] = from_acc<T>(acc_t(0));
      }
      continue;
    }
    const acc_t inverse = acc_t(1) / sum;
    for (int64_t k = lane; k < length; k += kWarp) {
      const acc_t p = key_valid[k] ? exp_acc(to_acc(row[k]) - max) * inverse : acc_t(0);
      out[k] = from_acc<T>(p);
      if (query_valid) {
        my_significance[k] += static_cast<float>(p);
      }
    }
  }
  __syncthreads();
  float* scratch_row = scratch + task * length;
  for (int64_t k = threadIdx.x; k < length; k += blockDim.x) {
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) {
      total += warp_significance[w * length + k];
    }
    scratch_row[k] = total;
  }
}

// significance[b, k] = sum over the heads * tiles scratch rows of example b, in order.
__global__ void sum_significance_kernel(const float* __restrict__ scratch, float* __restrict__ significance,
                                        int64_t batch, int64_t rows_per_example, int64_t length) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= batch * length) {
    return;
  }
  const int64_t b = index / length;
  const int64_t k = index % length;
  float total = 0.0f;
  for (int64_t r = 0; r < rows_per_example; ++r) {
    total += scratch[(b * rows_per_example + r) * length + k];
  }
  significance[index] = total;
}

template <typename T>
cudaError_t launch(const void* scores, const bool* valid, void* probs, float* scratch, float* significance,
                   int64_t batch, int64_t heads, int64_t length, cudaStream_t stream) {
  const int warps = warps_per_block(length);
  const int64_t tiles = tiles_per_head(length);
  const int64_t softmax_blocks = batch * heads * tiles;
  constexpr int threads = 256;
  const int64_t sum_blocks = (batch * length + threads - 1) / threads;
  // The binding checks softmax_blocks (a clear message); sum_blocks is smaller (at most 32 rows per tile, 256
  // threads per block). Refusing here as well means a grid is never truncated by the cast to unsigned.
  if (softmax_blocks > kMaxGridBlocks || sum_blocks > kMaxGridBlocks) {
    return cudaErrorInvalidConfiguration;
  }
  const size_t shared_bytes = static_cast<size_t>(warps) * length * sizeof(float) + length;
  softmax_with_significance_kernel<T><<<static_cast<unsigned>(softmax_blocks), warps * kWarp, shared_bytes,
                                        stream>>>(static_cast<const T*>(scores), valid, static_cast<T*>(probs),
                                                  scratch, heads, length, tiles);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    return status;
  }
  sum_significance_kernel<<<static_cast<unsigned>(sum_blocks), threads, 0, stream>>>(scratch, significance, batch,
                                                                                     heads * tiles, length);
  return cudaGetLastError();
}

}  // namespace

int64_t softmax_scratch_elements(int64_t batch, int64_t heads, int64_t length) {
  return softmax_grid_blocks(batch, heads, length) * length;
}

int64_t softmax_grid_blocks(int64_t batch, int64_t heads, int64_t length) {
  if (length == 0) {
    return 0;  // no rows, and tiles_per_head would divide by zero
  }
  return batch * heads * tiles_per_head(length);
}

cudaError_t launch_softmax_with_significance(FloatKind kind, const void* scores, const bool* valid, void* probs,
                                             float* scratch, float* significance, int64_t batch, int64_t heads,
                                             int64_t length, cudaStream_t stream) {
  switch (kind) {
    case FloatKind::kFloat32:
      return launch<float>(scores, valid, probs, scratch, significance, batch, heads, length, stream);
    case FloatKind::kFloat64:
      return launch<double>(scores, valid, probs, scratch, significance, batch, heads, length, stream);
    case FloatKind::kFloat16:
      return launch<__half>(scores, valid, probs, scratch, significance, batch, heads, length, stream);
    case FloatKind::kBFloat16:
      return launch<__nv_bfloat16>(scores, valid, probs, scratch, significance, batch, heads, length, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace dtb
