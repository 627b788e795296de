// CPU kernel of dtb::select_and_gather: per example, the top keep[b] tokens by selection key (selection_key.h),
// put back in ascending position order, and their hidden rows gathered, in one op.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "../cpu_kernels.h"
#include "../op_checks.h"
#include "../selection_key.h"

// Compiled once per instruction set, into dtb::DEFAULT, dtb::AVX2 and dtb::AVX512 (see ../cpu_capability.h).
namespace dtb::CPU_CAPABILITY {
namespace {

// Bytes of row copies per parallel task: below this a copy stays on the calling thread, since waking the
// other threads costs more than the copy.
constexpr int64_t kParallelBytes = int64_t{1} << 18;

// Fills positions[b, :] (ascending kept positions, -1 past keep[b]) and kept_mask[b, :] for examples [begin, end).
template <typename mask_t>
void select_positions(const float* significance, const mask_t* mask, const int64_t* keep, bool keep_first,
                      int64_t length, int64_t max_keep, int64_t begin, int64_t end, int64_t* positions,
                      mask_t* kept_mask) {
  std::vector<uint64_t> keys(length);
  std::vector<uint64_t> ranked(length);
  for (int64_t b = begin; b < end; ++b) {
    const float* sig_row = significance + b * length;
    const mask_t* mask_row = mask + b * length;
    for (int64_t k = 0; k < length; ++k) {
      keys[k] = selection_key(sig_row[k], mask_row[k] != mask_t(0), keep_first && k == 0, k, length);
    }
    const int64_t count = keep[b];
    // Keys are distinct (they embed the position), so the tokens kept are exactly those whose key is at least
    // the count-th largest; scanning positions in order then yields them already ascending, with no sort.
    std::copy(keys.begin(), keys.end(), ranked.begin());
    std::nth_element(ranked.begin(), ranked.begin() + (count - 1), ranked.end(), std::greater<uint64_t>());
    const uint64_t threshold = ranked[count - 1];
    int64_t* position_row = positions + b * max_keep;
    int64_t slot = 0;
    for (int64_t k = 0; k < length; ++k) {
      if (keys[k] >= threshold) {
        position_row[slot++] = k;
      }
    }
    mask_t* kept_mask_row = kept_mask + b * max_keep;
    for (int64_t j = 0; j < count; ++j) {
      kept_mask_row[j] = mask_row[position_row[j]] != mask_t(0) ? mask_t(1) : mask_t(0);
    }
    std::fill(position_row + count, position_row + max_keep, int64_t(-1));
    std::fill(kept_mask_row + count, kept_mask_row + max_keep, mask_t(0));
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_and_gather_cpu(const at::Tensor& hidden_in,
                                                                     const at::Tensor& significance_in,
                                                                     const at::Tensor& mask_in,
                                                                     const at::Tensor& keep_in, int64_t max_keep,
                                                                     bool keep_first) {
  check_select_inputs(hidden_in, significance_in, mask_in, keep_in, max_keep);
  const at::Tensor hidden = hidden_in.contiguous();
  const at::Tensor significance =
      (significance_in.scalar_type() == at::kFloat ? significance_in : significance_in.to(at::kFloat)).contiguous();
  const at::Tensor mask = mask_in.contiguous();
  const at::Tensor keep = keep_in.contiguous();
  const int64_t batch = hidden.size(0);
  const int64_t length = hidden.size(1);
  const int64_t width = hidden.size(2);

  at::Tensor kept_hidden = at::empty({batch, max_keep, width}, hidden.options());
  at::Tensor kept_mask = at::empty({batch, max_keep}, mask.options());
  at::Tensor positions = at::empty({batch, max_keep}, keep.options());
  if (batch == 0 || max_keep == 0) {
    kept_hidden.zero_();
    return {kept_hidden, kept_mask, positions};
  }

  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, mask.scalar_type(), "select_and_gather_cpu", [&] {
    // Grains of about at::internal::GRAIN_SIZE keys, as ATen's own kernels use: small inputs stay on the calling
    // thread, where waking the others would cost more than the work.
    at::parallel_for(0, batch, std::max<int64_t>(1, at::internal::GRAIN_SIZE / length), [&](int64_t begin, int64_t end) {
      select_positions<scalar_t>(significance.const_data_ptr<float>(), mask.const_data_ptr<scalar_t>(),
                                 keep.const_data_ptr<int64_t>(), keep_first, length, max_keep, begin, end,
                                 positions.mutable_data_ptr<int64_t>(), kept_mask.mutable_data_ptr<scalar_t>());
    });
  });

  // Row copies, parallel over all B * K output rows so that batch 1 uses every thread too.
  const int64_t row_bytes = width * static_cast<int64_t>(hidden.element_size());
  const char* hidden_data = static_cast<const char*>(hidden.const_data_ptr());
  char* kept_data = static_cast<char*>(kept_hidden.mutable_data_ptr());
  const int64_t* position_data = positions.const_data_ptr<int64_t>();
  const int64_t grain = std::max<int64_t>(1, kParallelBytes / std::max<int64_t>(1, row_bytes));
  at::parallel_for(0, batch * max_keep, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t position = position_data[row];
      char* destination = kept_data + row * row_bytes;
      if (position < 0) {
        std::memset(destination, 0, row_bytes);
      } else {
        const int64_t b = row / max_keep;
        std::memcpy(destination, hidden_data + (b * length + position) * row_bytes, row_bytes);
      }
    }
  });
  return {kept_hidden, kept_mask, positions};
}

}  // namespace dtb::CPU_CAPABILITY
