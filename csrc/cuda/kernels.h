// Launchers of the dtb CUDA kernels. Plain C++ and the CUDA runtime only (no torch), so the .cu files compile with
// a bare `nvcc -c -std=c++17`; csrc/cuda/binding.cpp wraps them as torch ops. Every launcher enqueues on `stream`
// and returns the launch status (cudaGetLastError), which the binding turns into an error message.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace dtb {
namespace cuda {

enum class FloatKind { kFloat32, kFloat64, kFloat16, kBFloat16 };

// Longest sequence softmax_with_significance handles: each block keeps one float significance row per warp in
// shared memory, plus the key mask (48 KiB without opt-in: 5 bytes per key for at least one warp).
constexpr int64_t kSoftmaxMaxLength = 8192;

// Number of float elements of the significance scratch buffer the softmax launcher needs.
int64_t softmax_scratch_elements(int64_t batch, int64_t heads, int64_t length);

// scores, probs: [B, H, L, L] contiguous of `kind`; valid: [B, L] bool; significance: [B, L] float32 (written);
// scratch: softmax_scratch_elements(...) floats.
cudaError_t launch_softmax_with_significance(FloatKind kind, const void* scores, const bool* valid, void* probs,
                                             float* scratch, float* significance, int64_t batch, int64_t heads,
                                             int64_t length, cudaStream_t stream);

// Longest sequence select_and_gather handles: one block sorts the L selection keys (8 bytes each, padded to a
// power of two) in shared memory.
constexpr int64_t kSelectMaxLength = 4096;

// hidden: [B, L, row_bytes] bytes, contiguous; significance: [B, L] float32; valid: [B, L] bool; keep: [B] int64
// with 1 <= keep[b] <= max_keep <= L. Writes kept_hidden [B, max_keep, row_bytes] (zero past keep[b]),
// kept_valid [B, max_keep] (false past keep[b]) and positions [B, max_keep] (ascending, -1 past keep[b]).
cudaError_t launch_select_and_gather(const void* hidden, const float* significance, const bool* valid,
                                     const int64_t* keep, bool keep_first, void* kept_hidden, bool* kept_valid,
                                     int64_t* positions, int64_t batch, int64_t length, int64_t max_keep,
                                     int64_t row_bytes, cudaStream_t stream);

// out: [B, L0, row_bytes] bytes, already a copy of base; src: [B, K, row_bytes]; positions: [B, K] int64 in
// [-1, L0), distinct within a row. Copies src rows to their positions; -1 slots are skipped.
cudaError_t launch_restore(void* out, const void* src, const int64_t* positions, int64_t batch, int64_t length,
                           int64_t slots, int64_t row_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace dtb
