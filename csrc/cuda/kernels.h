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

// Most blocks a launcher puts along a grid's x dimension: CUDA's gridDim.x limit. A launcher asked for more returns
// cudaErrorInvalidConfiguration instead of truncating the grid; the binding checks first, with a message.
constexpr int64_t kMaxGridBlocks = 2147483647;

// Longest sequence softmax_with_significance handles: each block keeps one float significance row per warp in
// shared memory, plus the key mask (48 KiB without opt-in: 5 bytes per key for at least one warp).
constexpr int64_t kSoftmaxMaxLength = 8192;

// Number of float elements of the significance scratch buffer the softmax launcher needs.
int64_t softmax_scratch_elements(int64_t batch, int64_t heads, int64_t length);

// Blocks of the softmax grid: one per (example, head, tile of query rows); must be at most kMaxGridBlocks.
int64_t softmax_grid_blocks(int64_t batch, int64_t heads, int64_t length);

// scores, probs: [B, H, L, L] contiguous of `kind`; valid: [B, L] bool; significance: [B, L] float32 (written);
// scratch: softmax_scratch_elements(...) floats. A valid key scoring NaN or +inf makes its row NaN up to the
// example's last valid key (0 after it), as the CPU op does.
cudaError_t launch_softmax_with_significance(FloatKind kind, const void* scores, const bool* valid, void* probs,
                                             float* scratch, float* significance, int64_t batch, int64_t heads,
                                             int64_t length, cudaStream_t stream);

// Longest sequence select_and_gather handles: one block sorts the L selection keys (8 bytes each, padded to a
// power of two) in shared memory.
constexpr int64_t kSelectMaxLength = 4096;

// hidden: [B, L, row_bytes] bytes, contiguous; significance: [B, L] float32; valid: [B, L] bool; keep: [B] int64;
// max_keep <= L; B at most kMaxGridBlocks. Writes kept_hidden [B, max_keep, row_bytes] (zero past keep[b]),
// kept_valid [B, max_keep] (false past keep[b]) and positions [B, max_keep] (ascending, -1 past keep[b]).
// An example with keep[b] outside [1, max_keep] (possible only where the host check was skipped, during CUDA-graph
// capture) is poisoned instead: all its kept_hidden bytes 0xFF (NaN), kept_valid true, positions 0..max_keep-1.
cudaError_t launch_select_and_gather(const void* hidden, const float* significance, const bool* valid,
                                     const int64_t* keep, bool keep_first, void* kept_hidden, bool* kept_valid,
                                     int64_t* positions, int64_t batch, int64_t length, int64_t max_keep,
                                     int64_t row_bytes, cudaStream_t stream);

// dtb::restore, in two launches (the binding may check the flags in between):
//
// launch_restore_claims. positions: [B, K] int64; claims: [B, L0] int64 filled with -1 by the caller; flags: [B]
// int32 zeroed by the caller. Sets claims[b, p] to the slot k with positions[b, k] = p (-2 where several slots
// share p), and in flags[b] the bits kRestoreOutOfRange (a position outside [-1, L0)) and kRestoreDuplicate.
constexpr int kRestoreOutOfRange = 1;
constexpr int kRestoreDuplicate = 2;
cudaError_t launch_restore_claims(const int64_t* positions, int64_t* claims, int* flags, int64_t batch,
                                  int64_t length, int64_t slots, cudaStream_t stream);

// launch_restore_rows. out, base: [B, L0, row_bytes] bytes; src: [B, K, row_bytes]; claims, flags: as left by
// launch_restore_claims. Writes every out row once: src's row of the slot claiming it, else base's row; every row
// of an example with flags[b] != 0 is filled with 0xFF bytes (NaN in every floating dtype).
cudaError_t launch_restore_rows(void* out, const void* base, const void* src, const int64_t* claims,
                                const int* flags, int64_t batch, int64_t length, int64_t slots, int64_t row_bytes,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace dtb
