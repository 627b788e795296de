// CUDA implementations of the dtb ops: argument checks, output allocation and dtype dispatch around the launchers
// of kernels.h, on the current CUDA stream of the inputs' device. Compiled only when setup.py builds CUDA.
//
// CUDA-graph capture. The checks that read tensor values (keep counts, restore positions) need a device-to-host
// copy, which a stream being captured into a CUDA graph forbids (torch.cuda.graph, torch.compile's
// "reduce-overhead"). They run exactly when cudaStreamIsCapturing reports cudaStreamCaptureStatusNone for the
// current stream, and are skipped otherwise (a capture active or already invalidated). Skipped checks leave the
// kernels' own guards: an invalid value never reads or writes out of bounds, and it poisons the outputs it concerns
// with NaN (kernels.h says which), so a captured graph replayed on bad inputs yields NaN instead of wrong numbers.
// Shape, dtype and device checks read no values and always run.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../op_checks.h"
#include "kernels.h"

namespace dtb {
namespace {

void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

cuda::FloatKind float_kind(const at::Tensor& tensor, const char* op, const char* name) {
  switch (tensor.scalar_type()) {
    case at::kFloat:
      return cuda::FloatKind::kFloat32;
    case at::kDouble:
      return cuda::FloatKind::kFloat64;
    case at::kHalf:
      return cuda::FloatKind::kFloat16;
    case at::kBFloat16:
      return cuda::FloatKind::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": ", name, " must be float32, float64, float16 or bfloat16, got ", tensor.scalar_type());
  }
}

// True when the checks that read values may run: the current stream is not being captured. Call it with the
// device guard set (the inputs' device already has a context).
bool may_read_values() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None;
}

void check_grid(int64_t blocks, const char* op, const char* what, c10::IntArrayRef shape) {
  TORCH_CHECK(blocks <= cuda::kMaxGridBlocks, op, ": on CUDA, ", what, " must be at most ", cuda::kMaxGridBlocks,
              " (the CUDA grid limit, gridDim.x), got ", blocks, " for an input of shape ", shape);
}

at::Tensor as_valid(const at::Tensor& mask) {
  return (mask.scalar_type() == at::kBool ? mask : mask.ne(0)).contiguous();
}

std::tuple<at::Tensor, at::Tensor> softmax_with_significance_cuda(const at::Tensor& scores_in, const at::Tensor& mask) {
  constexpr const char* op = "dtb::softmax_with_significance";
  check_softmax_inputs(scores_in, mask);
  const int64_t batch = scores_in.size(0);
  const int64_t heads = scores_in.size(1);
  const int64_t length = scores_in.size(3);
  TORCH_CHECK(length <= cuda::kSoftmaxMaxLength, op, ": on CUDA, L must be at most ", cuda::kSoftmaxMaxLength,
              " (one shared-memory significance row per block), got scores of shape ", scores_in.sizes());
  check_grid(cuda::softmax_grid_blocks(batch, heads, length), op,
             "the number of thread blocks, B * H * ceil(L / rows per block),", scores_in.sizes());
  const cuda::FloatKind kind = float_kind(scores_in, op, "scores");
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const at::Tensor valid = as_valid(mask);
  at::Tensor probs = at::empty_like(scores, at::MemoryFormat::Contiguous);
  at::Tensor significance = at::zeros({batch, length}, scores.options().dtype(at::kFloat));
  if (scores.numel() == 0) {
    return {probs, significance};
  }
  at::Tensor scratch = at::empty({cuda::softmax_scratch_elements(batch, heads, length)}, significance.options());
  check_launch(cuda::launch_softmax_with_significance(kind, scores.const_data_ptr(), valid.const_data_ptr<bool>(),
                                                      probs.mutable_data_ptr(), scratch.mutable_data_ptr<float>(),
                                                      significance.mutable_data_ptr<float>(), batch, heads, length,
                                                      c10::cuda::getCurrentCUDAStream()),
               op);
  return {probs, significance};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_and_gather_cuda(const at::Tensor& hidden_in,
                                                                      const at::Tensor& significance_in,
                                                                      const at::Tensor& mask, const at::Tensor& keep_in,
                                                                      int64_t max_keep, bool keep_first) {
  constexpr const char* op = "dtb::select_and_gather";
  check_select_shapes(hidden_in, significance_in, mask, keep_in, max_keep);
  const int64_t batch = hidden_in.size(0);
  const int64_t length = hidden_in.size(1);
  TORCH_CHECK(length <= cuda::kSelectMaxLength, op, ": on CUDA, L must be at most ", cuda::kSelectMaxLength,
              " (the selection sorts L keys in shared memory), got hidden of shape ", hidden_in.sizes());
  check_grid(batch, op, "B (one block row per example)", hidden_in.sizes());
  const c10::cuda::CUDAGuard guard(hidden_in.device());
  if (may_read_values()) {
    check_keep_counts(keep_in, length, max_keep);
  }
  const at::Tensor hidden = hidden_in.contiguous();
  const at::Tensor significance = significance_in.to(at::kFloat).contiguous();
  const at::Tensor valid = as_valid(mask);
  const at::Tensor keep = keep_in.contiguous();
  at::Tensor kept_hidden = at::empty({batch, max_keep, hidden.size(2)}, hidden.options());
  at::Tensor kept_valid = at::empty({batch, max_keep}, valid.options());
  at::Tensor positions = at::empty({batch, max_keep}, keep.options());
  check_launch(cuda::launch_select_and_gather(
                   hidden.const_data_ptr(), significance.const_data_ptr<float>(), valid.const_data_ptr<bool>(),
                   keep.const_data_ptr<int64_t>(), keep_first, kept_hidden.mutable_data_ptr(),
                   kept_valid.mutable_data_ptr<bool>(), positions.mutable_data_ptr<int64_t>(), batch, length,
                   max_keep, hidden.size(2) * static_cast<int64_t>(hidden.element_size()),
                   c10::cuda::getCurrentCUDAStream()),
               op);
  at::Tensor kept_mask = mask.scalar_type() == at::kBool ? kept_valid : kept_valid.to(mask.scalar_type());
  return {kept_hidden, kept_mask, positions};
}

// Raises the CPU op's error for the positions whose example the claims kernel flagged. Runs only on that error
// path, so copying the positions to the host costs nothing in a correct run.
[[noreturn]] void raise_position_error(const at::Tensor& positions, int64_t length) {
  const at::Tensor on_host = positions.to(at::kCPU);
  check_position_range(on_host, length);
  check_distinct_positions(on_host, length);
  TORCH_INTERNAL_ASSERT(false, "dtb::restore: the CUDA kernel flagged positions that the host checks accept");
}

at::Tensor restore_cuda(const at::Tensor& base_in, const at::Tensor& src_in, const at::Tensor& positions_in) {
  check_restore_shapes(base_in, src_in, positions_in);
  const c10::cuda::CUDAGuard guard(base_in.device());
  const at::Tensor base = base_in.contiguous();
  const at::Tensor src = src_in.to(base.scalar_type()).contiguous();
  const at::Tensor positions = positions_in.contiguous();
  const int64_t batch = base.size(0);
  const int64_t length = base.size(1);
  const int64_t slots = src.size(1);
  at::Tensor out = at::empty_like(base, at::MemoryFormat::Contiguous);
  // claims [B, L0]: the slot restoring each row (-1: none); flags [B]: an example's invalid-position bits.
  at::Tensor claims = at::full({batch, length}, -1, positions.options());
  at::Tensor flags = at::zeros({batch}, positions.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  check_launch(cuda::launch_restore_claims(positions.const_data_ptr<int64_t>(), claims.mutable_data_ptr<int64_t>(),
                                           flags.mutable_data_ptr<int>(), batch, length, slots, stream),
               "dtb::restore");
  // The flags are read back (one small copy, a host sync) only outside capture; see the top of this file.
  if (batch > 0 && may_read_values() && flags.any().item<bool>()) {
    raise_position_error(positions, length);
  }
  check_launch(cuda::launch_restore_rows(out.mutable_data_ptr(), base.const_data_ptr(), src.const_data_ptr(),
                                         claims.const_data_ptr<int64_t>(), flags.const_data_ptr<int>(), batch, length,
                                         slots, base.size(2) * static_cast<int64_t>(base.element_size()), stream),
               "dtb::restore");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtb, CUDA, m) {
  m.impl("softmax_with_significance", &softmax_with_significance_cuda);
  m.impl("select_and_gather", &select_and_gather_cuda);
  m.impl("restore", &restore_cuda);
}

}  // namespace dtb
