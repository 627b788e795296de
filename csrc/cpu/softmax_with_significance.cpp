// CPU kernel of dtb::softmax_with_significance: the masked softmax over keys and, in the same pass, the attention
// each key receives (summed over heads and valid queries). Probabilities are never re-read from memory to
// compute the significance: each row's probabilities are added to a per-task partial while still in cache.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../cpu_kernels.h"
#include "../op_checks.h"

// Compiled once per instruction set, into dtb::DEFAULT, dtb::AVX2 and dtb::AVX512 (see ../cpu_capability.h).
namespace dtb::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Parallel tasks are (example, head, block of query rows), each with its own significance partial (one L-row).
// Heads are split into query blocks only until there are about kTargetTasks tasks, enough to keep the threads
// busy at batch 1: more partials would cost memory traffic at large batch. The split depends only on the shapes,
// so the significance (summed per task, then over tasks in a fixed order) is the same for any thread count.
constexpr int64_t kTargetTasks = 64;

template <typename acc_t>
Vectorized<acc_t> fast_exp(const Vectorized<acc_t>& x) {
  return x.exp();
}

// The float exp with at most 20 ulp error that ATen's own softmax uses.
template <>
Vectorized<float> fast_exp(const Vectorized<float>& x) {
  return x.exp_u20();
}

// `count` (<= vector width) scores from `row + k` as acc_t lanes; lanes past `count` are -inf.
template <typename scalar_t, typename acc_t>
Vectorized<acc_t> load_scores(const scalar_t* row, int64_t k, int64_t count) {
  using Vec = Vectorized<acc_t>;
  const Vec neg_inf(-std::numeric_limits<acc_t>::infinity());
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return count == Vec::size() ? Vec::loadu(row + k) : Vec::set(neg_inf, Vec::loadu(row + k, count), count);
  } else {
    Vec x;
    if (count == Vec::size()) {
      at::vec::load_to_float(row + k, x);
      return x;
    }
    acc_t widened[Vec::size()];
    for (int64_t i = 0; i < count; ++i) {
      widened[i] = static_cast<acc_t>(row[k + i]);
    }
    return Vec::set(neg_inf, Vec::loadu(widened, count), count);
  }
}

// Masked keys (all-ones bits in `masked_bits`, when not null) read as -inf: they neither win the max nor add to
// the sum.
template <typename acc_t>
Vectorized<acc_t> mask_keys(const Vectorized<acc_t>& x, const acc_t* masked_bits, int64_t k, int64_t count) {
  using Vec = Vectorized<acc_t>;
  if (masked_bits == nullptr) {
    return x;
  }
  return Vec::blendv(x, Vec(-std::numeric_limits<acc_t>::infinity()), Vec::loadu(masked_bits + k, count));
}

// First half of the softmax of one row over its first `n` keys (the rest are padding, handled by the caller):
// writes exp(x - max) to `work` and returns 1 / sum, or 0 when no valid key has a finite score (the row then ends
// up all zeros rather than 0/0). `work` is the output row itself for float and double, and both passes read the
// scores; for reduced precision it is a float buffer, into which the first pass stores the widened scores, so the
// row is read and widened once.
template <typename scalar_t, typename acc_t>
acc_t exponentiate_row(const scalar_t* in, acc_t* work, int64_t n, const acc_t* masked_bits) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t width = Vec::size();
  const Vec neg_inf(-std::numeric_limits<acc_t>::infinity());
  Vec running_max = neg_inf;
  for (int64_t k = 0; k < n; k += width) {
    const int64_t count = std::min(width, n - k);
    const Vec x = mask_keys(load_scores<scalar_t, acc_t>(in, k, count), masked_bits, k, count);
    running_max = at::vec::maximum(running_max, x);
    if constexpr (!std::is_same_v<scalar_t, acc_t>) {
      x.store(work + k, count);
    }
  }
  const acc_t row_max =
      at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, running_max);
  if (row_max == -std::numeric_limits<acc_t>::infinity()) {
    std::memset(work, 0, sizeof(acc_t) * n);
    return acc_t(0);
  }
  const Vec shift(row_max);
  Vec running_sum(0);
  int64_t k = 0;
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    // Reduced precision: the widened, masked scores that the first pass stored are exponentiated in place, two
    // vectors per step, which gives the out-of-order core two independent exp chains to overlap.
    Vec running_sum_odd(0);
    for (; k + 2 * width <= n; k += 2 * width) {
      const Vec e = fast_exp(Vec::loadu(work + k) - shift);
      const Vec e_odd = fast_exp(Vec::loadu(work + k + width) - shift);
      e.store(work + k);
      e_odd.store(work + k + width);
      running_sum = running_sum + e;
      running_sum_odd = running_sum_odd + e_odd;
    }
    running_sum = running_sum + running_sum_odd;
  }
  for (; k < n; k += width) {
    const int64_t count = std::min(width, n - k);
    Vec x;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      x = mask_keys(load_scores<scalar_t, acc_t>(in, k, count), masked_bits, k, count);
    } else {
      x = count == width ? Vec::loadu(work + k) : Vec::set(neg_inf, Vec::loadu(work + k, count), count);
    }
    const Vec e = fast_exp(x - shift);
    e.store(work + k, count);
    running_sum = running_sum + e;
  }
  return acc_t(1) / at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, running_sum);
}

// Second half for up to kRowGroup rows at once: out[r] = work[r] * inverses[r] (narrowed to scalar_t), and the
// rows of valid queries are added to `significance`. Grouping rows loads and stores the significance row once per
// group instead of once per row.
constexpr int kRowGroup = 4;

template <typename scalar_t, typename acc_t>
void normalise_rows(acc_t* const* work, scalar_t* const* out, const acc_t* inverses, const bool* adds, int rows,
                    int64_t n, acc_t* significance) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t width = Vec::size();
  int64_t k = 0;
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    // Reduced precision: two float vectors narrow into one full vector of scalar_t, stored straight to the output.
    for (; k + 2 * width <= n; k += 2 * width) {
      Vec low_total = Vec::loadu(significance + k);
      Vec high_total = Vec::loadu(significance + k + width);
      for (int r = 0; r < rows; ++r) {
        const Vec low = Vec::loadu(work[r] + k) * Vec(inverses[r]);
        const Vec high = Vec::loadu(work[r] + k + width) * Vec(inverses[r]);
        at::vec::convert_from_float<scalar_t>(low, high).store(out[r] + k);
        if (adds[r]) {
          low_total = low_total + low;
          high_total = high_total + high;
        }
      }
      low_total.store(significance + k);
      high_total.store(significance + k + width);
    }
  }
  // The rest (all of a float or double row; the tail of a reduced-precision one) is normalised in place.
  const int64_t rest = k;
  for (; k < n; k += width) {
    const int64_t lanes = std::min(width, n - k);
    Vec total = Vec::loadu(significance + k, lanes);
    for (int r = 0; r < rows; ++r) {
      const Vec p = Vec::loadu(work[r] + k, lanes) * Vec(inverses[r]);
      p.store(work[r] + k, lanes);
      if (adds[r]) {
        total = total + p;
      }
    }
    total.store(significance + k, lanes);
  }
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    for (int r = 0; r < rows; ++r) {
      at::vec::convert(work[r] + rest, out[r] + rest, n - rest);
    }
  }
}

template <typename scalar_t>
void softmax_with_significance_kernel(const at::Tensor& scores, const at::Tensor& valid, at::Tensor& probs,
                                      at::Tensor& significance) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool computes_in_place = std::is_same_v<acc_t, scalar_t>;
  const int64_t batch = scores.size(0);
  const int64_t heads = scores.size(1);
  const int64_t length = scores.size(2);
  const int64_t wanted_chunks = std::min((length + 15) / 16, (kTargetTasks + batch * heads - 1) / (batch * heads));
  const int64_t rows_per_chunk = (length + wanted_chunks - 1) / wanted_chunks;
  const int64_t chunks = (length + rows_per_chunk - 1) / rows_per_chunk;
  const bool* valid_data = valid.const_data_ptr<bool>();

  // Keys past the last valid one are skipped (written as zeros); masked keys before it are blended to -inf.
  std::vector<int64_t> key_end(batch, 0);
  std::vector<bool> has_holes(batch, false);
  at::Tensor masked_bits = at::zeros({batch, length}, scores.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* masked_bits_data = masked_bits.mutable_data_ptr<acc_t>();
  for (int64_t b = 0; b < batch; ++b) {
    const bool* row = valid_data + b * length;
    for (int64_t k = 0; k < length; ++k) {
      if (row[k]) {
        key_end[b] = k + 1;
      }
    }
    for (int64_t k = 0; k < key_end[b]; ++k) {
      if (!row[k]) {
        has_holes[b] = true;
        std::memset(masked_bits_data + b * length + k, 0xFF, sizeof(acc_t));
      }
    }
  }

  // One significance partial per task, summed in a fixed order afterwards: deterministic for any thread count.
  at::Tensor partial = at::empty({batch * heads * chunks, length}, masked_bits.options());
  acc_t* partial_data = partial.mutable_data_ptr<acc_t>();
  const scalar_t* scores_data = scores.const_data_ptr<scalar_t>();
  scalar_t* probs_data = probs.mutable_data_ptr<scalar_t>();

  // Grains of about at::internal::GRAIN_SIZE scores, as ATen's own kernels use: small inputs stay on the calling
  // thread, where waking the others would cost more than the work.
  const int64_t task_grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (rows_per_chunk * length));
  at::parallel_for(0, batch * heads * chunks, task_grain, [&](int64_t begin, int64_t end) {
    // Widened rows of a group, for reduced-precision scores; float and double rows are computed in place.
    std::vector<acc_t> buffer(computes_in_place ? 0 : kRowGroup * length);
    acc_t* work[kRowGroup];
    scalar_t* out[kRowGroup];
    acc_t inverses[kRowGroup];
    bool adds[kRowGroup];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (heads * chunks);
      const int64_t h = (task / chunks) % heads;
      const int64_t q_begin = (task % chunks) * rows_per_chunk;
      const int64_t q_end = std::min(length, q_begin + rows_per_chunk);
      // Zeroed here rather than up front: the row is then already in this thread's cache.
      std::fill(partial_data + task * length, partial_data + (task + 1) * length, acc_t(0));
      const int64_t n = key_end[b];
      const acc_t* bits = has_holes[b] ? masked_bits_data + b * length : nullptr;
      const int64_t head_offset = (b * heads + h) * length * length;
      for (int64_t group_begin = q_begin; group_begin < q_end; group_begin += kRowGroup) {
        const int rows = static_cast<int>(std::min<int64_t>(kRowGroup, q_end - group_begin));
        for (int r = 0; r < rows; ++r) {
          const int64_t offset = head_offset + (group_begin + r) * length;
          out[r] = probs_data + offset;
          if constexpr (computes_in_place) {
            work[r] = probs_data + offset;
          } else {
            work[r] = buffer.data() + r * length;
          }
          inverses[r] = exponentiate_row<scalar_t, acc_t>(scores_data + offset, work[r], n, bits);
          adds[r] = valid_data[b * length + group_begin + r];
          std::memset(out[r] + n, 0, sizeof(scalar_t) * (length - n));
        }
        normalise_rows<scalar_t, acc_t>(work, out, inverses, adds, rows, n, partial_data + task * length);
      }
    }
  });

  float* significance_data = significance.mutable_data_ptr<float>();
  const int64_t sum_grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (heads * chunks * length));
  at::parallel_for(0, batch, sum_grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> total(length);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(total.begin(), total.end(), acc_t(0));
      for (int64_t task = b * heads * chunks; task < (b + 1) * heads * chunks; ++task) {
        const acc_t* row = partial_data + task * length;
        for (int64_t k = 0; k < length; ++k) {
          total[k] += row[k];
        }
      }
      for (int64_t k = 0; k < length; ++k) {
        significance_data[b * length + k] = static_cast<float>(total[k]);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> softmax_with_significance_cpu(const at::Tensor& scores_in, const at::Tensor& mask) {
  check_softmax_inputs(scores_in, mask);
  const at::Tensor scores = scores_in.contiguous();
  const at::Tensor valid = (mask.scalar_type() == at::kBool ? mask : mask.ne(0)).contiguous();
  at::Tensor probs = at::empty_like(scores, at::MemoryFormat::Contiguous);
  at::Tensor significance = at::zeros({scores.size(0), scores.size(3)}, scores.options().dtype(at::kFloat));
  if (scores.numel() == 0) {
    return {probs, significance};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "softmax_with_significance_cpu",
                                  [&] { softmax_with_significance_kernel<scalar_t>(scores, valid, probs, significance); });
  return {probs, significance};
}

}  // namespace dtb::CPU_CAPABILITY
