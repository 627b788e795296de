// Calls the dtb CPU kernels through the dispatcher and checks them against naive loops (in double precision).
// No framework: prints each failure and exits non-zero if any check failed.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "../../csrc/cpu_capability.h"

namespace {

int failures = 0;

void expect(bool condition, const std::string& what) {
  if (!condition) {
    ++failures;
    std::cerr << "FAILED: " << what << "\n";
  }
}

using SoftmaxFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&);
using SelectFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, const at::Tensor&, int64_t, bool);
using RestoreFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);

template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

// mask[b, k] = k < lengths[b], except a hole at position 1 of example 0 (a non-prefix mask).
at::Tensor make_mask(const std::vector<int64_t>& lengths, int64_t length) {
  at::Tensor mask = at::zeros({static_cast<int64_t>(lengths.size()), length}, at::kLong);
  for (size_t b = 0; b < lengths.size(); ++b) {
    mask[b].narrow(0, 0, lengths[b]).fill_(1);
  }
  if (length > 2) {
    mask[0][1] = 0;
  }
  return mask;
}

void test_softmax_with_significance() {
  const int64_t batch = 3, heads = 4, length = 21;
  at::Tensor scores = at::randn({batch, heads, length, length}, at::kFloat);
  at::Tensor mask = make_mask({21, 9, 0}, length);
  auto [probs, significance] = find_op<SoftmaxFn>("dtb::softmax_with_significance").call(scores, mask);
  expect(probs.sizes() == scores.sizes() && probs.scalar_type() == at::kFloat, "softmax: probs shape and dtype");
  expect(significance.sizes() == at::IntArrayRef({batch, length}) && significance.scalar_type() == at::kFloat,
         "softmax: significance shape and dtype");
  auto s = scores.accessor<float, 4>();
  auto p = probs.accessor<float, 4>();
  auto m = mask.accessor<int64_t, 2>();
  auto sig = significance.accessor<float, 2>();
  double worst_prob = 0.0, worst_sig = 0.0;
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<double> expected_sig(length, 0.0);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t q = 0; q < length; ++q) {
        double max = -std::numeric_limits<double>::infinity();
        for (int64_t k = 0; k < length; ++k) {
          if (m[b][k]) max = std::max(max, static_cast<double>(s[b][h][q][k]));
        }
        double sum = 0.0;
        for (int64_t k = 0; k < length; ++k) {
          if (m[b][k]) sum += std::exp(s[b][h][q][k] - max);
        }
        for (int64_t k = 0; k < length; ++k) {
          const double expected = m[b][k] ? std::exp(s[b][h][q][k] - max) / sum : 0.0;
          worst_prob = std::max(worst_prob, std::abs(expected - p[b][h][q][k]));
          if (m[b][q]) expected_sig[k] += expected;
        }
      }
    }
    for (int64_t k = 0; k < length; ++k) {
      worst_sig = std::max(worst_sig, std::abs(expected_sig[k] - sig[b][k]));
    }
  }
  expect(worst_prob < 1e-5, "softmax: probabilities match the naive computation (max error " +
                                std::to_string(worst_prob) + ")");
  expect(worst_sig < 1e-4, "softmax: significance matches the naive computation (max error " +
                               std::to_string(worst_sig) + ")");
  expect(!probs.isnan().any().item<bool>(), "softmax: a fully masked example gives zeros, not NaN");
}

void test_select_and_gather_and_restore() {
  const int64_t batch = 3, length = 17, width = 5, max_keep = 12;
  at::Tensor hidden = at::randn({batch, length, width}, at::kFloat);
  // Quarter steps: many ties, which break toward the lower position.
  at::Tensor significance = at::randint(0, 4, {batch, length}, at::kLong).to(at::kFloat) / 4;
  at::Tensor mask = make_mask({17, 6, 1}, length);
  at::Tensor keep = at::tensor(std::vector<int64_t>{12, 8, 1}, at::kLong);
  for (bool keep_first : {false, true}) {
    auto [kept, kept_mask, positions] =
        find_op<SelectFn>("dtb::select_and_gather").call(hidden, significance, mask, keep, max_keep, keep_first);
    expect(kept.sizes() == at::IntArrayRef({batch, max_keep, width}), "select: kept_hidden shape");
    auto sig = significance.accessor<float, 2>();
    auto m = mask.accessor<int64_t, 2>();
    auto pos = positions.accessor<int64_t, 2>();
    auto kept_m = kept_mask.accessor<int64_t, 2>();
    for (int64_t b = 0; b < batch; ++b) {
      // Naive order: by (forced first, real token, significance) descending, then position ascending.
      std::vector<int64_t> order(length);
      std::iota(order.begin(), order.end(), 0);
      auto priority = [&](int64_t k) {
        if (keep_first && k == 0) return std::numeric_limits<double>::infinity();
        return m[b][k] ? static_cast<double>(sig[b][k]) : -std::numeric_limits<double>::infinity();
      };
      std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return priority(x) > priority(y); });
      const int64_t count = keep[b].item<int64_t>();
      std::vector<int64_t> expected(order.begin(), order.begin() + count);
      std::sort(expected.begin(), expected.end());
      for (int64_t j = 0; j < max_keep; ++j) {
        const int64_t want = j < count ? expected[j] : -1;
        expect(pos[b][j] == want, "select: position [" + std::to_string(b) + ", " + std::to_string(j) + "] is " +
                                      std::to_string(pos[b][j]) + ", expected " + std::to_string(want));
        expect(kept_m[b][j] == (want >= 0 ? m[b][want] : 0), "select: kept mask");
        const at::Tensor want_row = want >= 0 ? hidden[b][want] : at::zeros({width});
        expect(at::equal(kept[b][j], want_row), "select: gathered row");
      }
    }
    at::Tensor base = at::randn({batch, length, width}, at::kFloat);
    at::Tensor restored = find_op<RestoreFn>("dtb::restore").call(base, kept, positions);
    at::Tensor expected = base.clone();
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t j = 0; j < max_keep; ++j) {
        if (pos[b][j] >= 0) expected[b][pos[b][j]] = kept[b][j];
      }
    }
    expect(at::equal(restored, expected), "restore: rows scattered into a copy of base");
    expect(at::equal(find_op<RestoreFn>("dtb::restore").call(hidden, kept, positions), hidden),
           "restore: gathered rows restored into their source give the source back");
  }
}

void test_bad_keep_is_rejected() {
  at::Tensor hidden = at::randn({2, 4, 3});
  bool raised = false;
  try {
    find_op<SelectFn>("dtb::select_and_gather")
        .call(hidden, at::rand({2, 4}), at::ones({2, 4}), at::tensor(std::vector<int64_t>{0, 2}, at::kLong), 2, false);
  } catch (const c10::Error& error) {
    raised = std::string(error.what()).find("every keep count must be in [1, L]") != std::string::npos;
  }
  expect(raised, "select: a keep count of 0 raises with a message");
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_softmax_with_significance();
  test_select_and_gather_and_restore();
  test_bad_keep_is_rejected();
  if (failures > 0) {
    std::cerr << failures << " check(s) failed\n";
    return 1;
  }
  std::cout << "dtb C++ op tests passed (CPU kernels: "
            << dtb::cpu::capability_name(dtb::cpu::active_capability().chosen) << ")\n";
  return 0;
}
