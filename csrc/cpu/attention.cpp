// CPU kernel of dtb::attention: softmax(scale * Q K^T over the valid keys) V, per example and head, for the
// short sequences and small head sizes of the dynamic encoder (MiniLM: d = 32, n <= 384).
//
// Why a kernel of our own: at batch 1 on a 2-core AMD EPYC (AVX512-BF16, no AMX), torch's CPU flash attention
// took 935 us in bf16 for 12 heads of 184 tokens (d = 32), about 55 GFLOP/s, while the layer's Linears run at
// about 420 GFLOP/s: attention was 8 % of a layer's FLOPs and 28 % of its time. Its blocks are sized for long
// sequences, and with d = 32 every tile product is too small for the GEMM micro-kernel it calls.
//
// The work is split in two parallel passes. First each (example, head) has its keys and values packed once into
// the layouts the inner loops read with unit stride; then tasks of (example, head, block of query rows) compute
// the scores of kRowTile rows at a time in registers, their softmax in float32, and the product with the values.
// With AVX512-BF16 (chosen at run time inside the AVX512 build) both products are VDPBF16PS dot products of bf16
// pairs with float32 accumulation, the scores stay float32, and the probabilities are rounded to bf16 for the
// second product, as a bf16 GEMM would round them. On CPUs with AMX-BF16 (head sizes a multiple of 32) the same
// products run as AMX tile matmuls, 16 query rows at a time, with the same softmax and roundings in between.
// Every other case (float32, float16, CPUs without BF16, the DEFAULT and AVX2 builds) runs the same loops in
// float32 FMAs through at::vec::Vectorized<float>.
//
// attention_with_significance also returns what softmax_with_significance does: the attention each key receives,
// summed over heads and valid queries, accumulated in float32 from the float32 probabilities.
//
// Semantics (what dtb_ext.reference.attention computes): keys whose mask is False get no weight; a query row
// whose every key is masked gets zeros (SDPA would give NaN). Rows of padding queries are computed like any other.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>

#include "amx.h"
#endif

#include "../cpu_kernels.h"
#include "../op_checks.h"

// Compiled once per instruction set, into dtb::DEFAULT, dtb::AVX2 and dtb::AVX512 (see ../cpu_capability.h).
namespace dtb::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using Vec = Vectorized<float>;

constexpr int kRowTile = 6;          // query rows whose scores and outputs are accumulated together in registers
constexpr int kAmxRows = 16;         // query rows of one AMX tile (the AMX path's row tile)
constexpr int64_t kTargetTasks = 48;  // enough (example, head, row block) tasks to balance the threads at batch 1
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Per example: keys at or past `end` are all masked (trailing padding is never computed); `bias` is 0 or -inf
// per key below `end` when a masked key sits there (a hole), else empty.
struct KeyLayout {
  int64_t end = 0;
  std::vector<float> bias;
};

std::vector<KeyLayout> key_layouts(const at::Tensor& valid, int64_t batch, int64_t length) {
  std::vector<KeyLayout> layouts(batch);
  if (!valid.defined()) {
    for (auto& layout : layouts) {
      layout.end = length;
    }
    return layouts;
  }
  const bool* data = valid.const_data_ptr<bool>();
  for (int64_t b = 0; b < batch; ++b) {
    const bool* row = data + b * length;
    KeyLayout& layout = layouts[b];
    for (int64_t k = 0; k < length; ++k) {
      if (row[k]) {
        layout.end = k + 1;
      }
    }
    if (std::find(row, row + layout.end, false) != row + layout.end) {
      layout.bias.resize(layout.end);
      for (int64_t k = 0; k < layout.end; ++k) {
        layout.bias[k] = row[k] ? 0.0f : kNegInf;
      }
    }
  }
  return layouts;
}

// Strides of a [B, H, n, d] tensor whose last dimension is contiguous, in elements.
struct Strides {
  int64_t batch, head, row;
  explicit Strides(const at::Tensor& t) : batch(t.stride(0)), head(t.stride(1)), row(t.stride(2)) {}
};

// Splits the query rows of each (example, head) into blocks of whole `tile`-row tiles so that there are about
// kTargetTasks tasks.
int64_t rows_per_block(int64_t batch, int64_t heads, int64_t length, int64_t tile) {
  const int64_t blocks = std::max<int64_t>(1, kTargetTasks / std::max<int64_t>(1, batch * heads));
  const int64_t rows = (length + blocks - 1) / blocks;
  return std::max<int64_t>(tile, (rows + tile - 1) / tile * tile);
}

// Softmax of one row of `end` float scores in place (entries past `end` are untouched); returns 1 / sum, or 0
// when no key has a finite score (every key masked), in which case the row is set to zeros.
float exponentiate(float* row, int64_t end) {
  Vec running_max(kNegInf);
  int64_t k = 0;
  for (; k + Vec::size() <= end; k += Vec::size()) {
    running_max = at::vec::maximum(running_max, Vec::loadu(row + k));
  }
  float row_max = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, running_max);
  for (; k < end; ++k) {
    row_max = std::max(row_max, row[k]);
  }
  if (row_max == kNegInf) {
    std::fill(row, row + end, 0.0f);
    return 0.0f;
  }
  const Vec shift(row_max);
  Vec running_sum(0.0f);
  for (k = 0; k + Vec::size() <= end; k += Vec::size()) {
    const Vec e = (Vec::loadu(row + k) - shift).exp_u20();
    e.store(row + k);
    running_sum = running_sum + e;
  }
  if (k < end) {
    const int64_t count = end - k;
    const Vec e = Vec::set(Vec(0.0f), (Vec::loadu(row + k, count) - shift).exp_u20(), count);
    e.store(row + k, count);
    running_sum = running_sum + e;
  }
  return 1.0f / at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, running_sum);
}

// Where attention_with_significance collects each key's significance: one float partial per task ([tasks, n],
// summed over the tasks of each example in task order afterwards, so the result does not depend on the thread
// count), and the query mask (only valid queries' attention counts). `data` is null for plain attention.
struct SignificancePartials {
  float* data = nullptr;
  int64_t stride = 0;           // n
  const bool* valid = nullptr;  // [B, n]; null when no mask was given (every query counts)

  // Adds, to `task`'s partial, the normalised probabilities (`probs` [kRowTile][n_pad] times `inverse`) of those of
  // example b's query rows [i, i + rows) that are valid, over keys [0, end). Does nothing for plain attention.
  void add(int64_t task, int64_t b, int64_t i, const float* probs, int64_t n_pad, int rows, const float* inverse,
           int64_t end) const {
    if (data == nullptr) {
      return;
    }
    float* partial = data + task * stride;
    for (int r = 0; r < rows; ++r) {
      if (valid != nullptr && !valid[b * stride + i + r]) {
        continue;
      }
      const Vec weight(inverse[r]);
      const float* row = probs + r * n_pad;
      int64_t k = 0;
      for (; k + Vec::size() <= end; k += Vec::size()) {
        at::vec::fmadd(Vec::loadu(row + k), weight, Vec::loadu(partial + k)).store(partial + k);
      }
      for (; k < end; ++k) {
        partial[k] += row[k] * inverse[r];
      }
    }
  }
};

// significance [B, n] float32 from the partials of the (head, row block) tasks of each example, in task order.
void sum_partials(const SignificancePartials& partials, int64_t batch, int64_t tasks_per_example, int64_t length,
                  at::Tensor& significance) {
  float* out = significance.mutable_data_ptr<float>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float* total = out + b * length;
      std::fill(total, total + length, 0.0f);
      for (int64_t task = b * tasks_per_example; task < (b + 1) * tasks_per_example; ++task) {
        const float* partial = partials.data + task * partials.stride;
        for (int64_t k = 0; k < length; ++k) {
          total[k] += partial[k];
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// float32 path (any input dtype, any build): keys packed transposed [d][n_pad] and values [n_pad][d], as float.

template <typename scalar_t>
void pack_float(const scalar_t* key, const scalar_t* value, int64_t row_stride_k, int64_t row_stride_v, int64_t end,
                int64_t n_pad, int64_t d, float* key_t, float* value_f) {
  for (int64_t j = 0; j < end; ++j) {
    for (int64_t c = 0; c < d; ++c) {
      key_t[c * n_pad + j] = static_cast<float>(key[j * row_stride_k + c]);
      value_f[j * d + c] = static_cast<float>(value[j * row_stride_v + c]);
    }
  }
  for (int64_t c = 0; c < d; ++c) {
    std::fill(key_t + c * n_pad + end, key_t + (c + 1) * n_pad, 0.0f);
  }
}

// Scores of `rows` (<= kRowTile) query rows against keys [0, end): scores[r * n_pad + j], scaled and masked.
// `q` is a [kRowTile][d] work buffer.
template <typename scalar_t>
void scores_float(const scalar_t* const* query_rows, int rows, const float* key_t, int64_t end, int64_t n_pad,
                  int64_t d, float scale, const float* bias, float* q, float* scores) {
  for (int r = 0; r < kRowTile; ++r) {
    for (int64_t c = 0; c < d; ++c) {
      q[r * d + c] = r < rows ? static_cast<float>(query_rows[r][c]) * scale : 0.0f;
    }
  }
  for (int64_t j = 0; j < end; j += Vec::size()) {
    Vec acc[kRowTile];
    std::fill(acc, acc + kRowTile, Vec(0.0f));
    for (int64_t c = 0; c < d; ++c) {
      const Vec k = Vec::loadu(key_t + c * n_pad + j);
      for (int r = 0; r < kRowTile; ++r) {
        acc[r] = at::vec::fmadd(Vec(q[r * d + c]), k, acc[r]);
      }
    }
    for (int r = 0; r < rows; ++r) {
      Vec s = acc[r];
      if (bias != nullptr) {
        s = s + Vec::loadu(bias + j, std::min<int64_t>(Vec::size(), end - j));
      }
      s.store(scores + r * n_pad + j);
    }
  }
}

template <typename scalar_t>
void attend_float(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                  const std::vector<KeyLayout>& layouts, double scale, int64_t block,
                  const SignificancePartials& partials, at::Tensor& out) {
  const int64_t batch = query.size(0), heads = query.size(1), length = query.size(2), d = query.size(3);
  const int64_t n_pad = (length + Vec::size() - 1) / Vec::size() * Vec::size();
  const Strides qs(query), ks(key), vs(value);
  std::vector<float> packed(static_cast<size_t>(batch * heads * 2 * n_pad * d));
  const scalar_t* key_data = key.const_data_ptr<scalar_t>();
  const scalar_t* value_data = value.const_data_ptr<scalar_t>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      float* key_t = packed.data() + bh * 2 * n_pad * d;
      pack_float(key_data + b * ks.batch + h * ks.head, value_data + b * vs.batch + h * vs.head, ks.row, vs.row,
                 layouts[b].end, n_pad, d, key_t, key_t + n_pad * d);
    }
  });
  const int64_t blocks = (length + block - 1) / block;
  const scalar_t* query_data = query.const_data_ptr<scalar_t>();
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  const Strides os(out);
  at::parallel_for(0, batch * heads * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(kRowTile * n_pad);
    std::vector<float> q(kRowTile * d);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / blocks, b = bh / heads, h = bh % heads;
      const KeyLayout& layout = layouts[b];
      const float* key_t = packed.data() + bh * 2 * n_pad * d;
      const float* value_f = key_t + n_pad * d;
      const float* bias = layout.bias.empty() ? nullptr : layout.bias.data();
      const int64_t row_end = std::min(length, (task % blocks + 1) * block);
      for (int64_t i = (task % blocks) * block; i < row_end; i += kRowTile) {
        const int rows = static_cast<int>(std::min<int64_t>(kRowTile, row_end - i));
        const scalar_t* query_rows[kRowTile];
        for (int r = 0; r < kRowTile; ++r) {
          query_rows[r] = query_data + b * qs.batch + h * qs.head + (i + std::min(r, rows - 1)) * qs.row;
        }
        scores_float(query_rows, rows, key_t, layout.end, n_pad, d, static_cast<float>(scale), bias, q.data(),
                     scores.data());
        float inverse[kRowTile];
        for (int r = 0; r < rows; ++r) {
          inverse[r] = exponentiate(scores.data() + r * n_pad, layout.end);
        }
        partials.add(task, b, i, scores.data(), n_pad, rows, inverse, layout.end);
        // The rows' outputs 16 (or 8) columns at a time, one accumulator per row: each value vector is loaded once
        // for all the rows.
        for (int64_t c = 0; c < d; c += Vec::size()) {
          const int64_t count = std::min<int64_t>(Vec::size(), d - c);
          Vec acc[kRowTile];
          std::fill(acc, acc + kRowTile, Vec(0.0f));
          for (int64_t j = 0; j < layout.end; ++j) {
            const Vec v = Vec::loadu(value_f + j * d + c, count);
            for (int r = 0; r < kRowTile; ++r) {
              acc[r] = at::vec::fmadd(Vec(scores[std::min(r, rows - 1) * n_pad + j]), v, acc[r]);
            }
          }
          for (int r = 0; r < rows; ++r) {
            float lanes[Vec::size()];
            (acc[r] * Vec(inverse[r])).store(lanes, count);
            scalar_t* o = out_data + b * os.batch + h * os.head + (i + r) * os.row;
            for (int64_t k = 0; k < count; ++k) {
              o[c + k] = static_cast<scalar_t>(lanes[k]);
            }
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// bf16 path: AVX512-BF16 dot products (VDPBF16PS: 16 float lanes, each += a.lo * b.lo + a.hi * b.hi over bf16
// pairs). Keys are packed as [d/2][n_pad] pairs (dimension pairs of one key), values as [n_pad/2][d] pairs (one
// dimension of two consecutive keys), so that both products load 16 lanes with unit stride and broadcast the
// other operand's pair.

#if defined(CPU_CAPABILITY_AVX512)
#define DTB_BF16_TARGET __attribute__((target("avx512bf16")))

constexpr int64_t kKeyStep = 32;  // keys per step of the score loop: two vectors, 2 x kRowTile accumulators

inline uint32_t pair_at(const at::BFloat16* row, int64_t c) {
  uint32_t pair;
  std::memcpy(&pair, row + c, sizeof(pair));
  return pair;
}

void pack_bf16(const at::BFloat16* key, const at::BFloat16* value, int64_t row_stride_k, int64_t row_stride_v,
               int64_t end, int64_t n_pad, int64_t d, uint32_t* key_pairs, uint32_t* value_pairs) {
  const int64_t half = d / 2;
  for (int64_t j = 0; j < end; ++j) {
    const at::BFloat16* row = key + j * row_stride_k;
    for (int64_t p = 0; p < half; ++p) {
      key_pairs[p * n_pad + j] = pair_at(row, 2 * p);
    }
  }
  for (int64_t p = 0; p < half; ++p) {
    std::fill(key_pairs + p * n_pad + end, key_pairs + (p + 1) * n_pad, 0u);
  }
  for (int64_t jp = 0; jp < (end + 1) / 2; ++jp) {
    const uint16_t* first = reinterpret_cast<const uint16_t*>(value + 2 * jp * row_stride_v);
    const uint16_t* second = 2 * jp + 1 < end ? reinterpret_cast<const uint16_t*>(value + (2 * jp + 1) * row_stride_v)
                                              : nullptr;
    uint32_t* out = value_pairs + jp * d;
    for (int64_t c = 0; c < d; ++c) {
      out[c] = static_cast<uint32_t>(first[c]) | (second ? static_cast<uint32_t>(second[c]) << 16 : 0u);
    }
  }
}

// Every (example, head)'s keys and values packed by pack_bf16, one after the other: [B * H][2][n_pad * d / 2] words,
// zero past each example's last valid key.
std::vector<uint32_t> pack_heads_bf16(const at::Tensor& key, const at::Tensor& value,
                                      const std::vector<KeyLayout>& layouts, int64_t n_pad) {
  const int64_t batch = key.size(0), heads = key.size(1), d = key.size(3);
  const int64_t head_words = n_pad * d;
  const Strides ks(key), vs(value);
  std::vector<uint32_t> packed(static_cast<size_t>(batch * heads * head_words));
  const at::BFloat16* key_data = key.const_data_ptr<at::BFloat16>();
  const at::BFloat16* value_data = value.const_data_ptr<at::BFloat16>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      uint32_t* key_pairs = packed.data() + bh * head_words;
      pack_bf16(key_data + b * ks.batch + h * ks.head, value_data + b * vs.batch + h * vs.head, ks.row, vs.row,
                layouts[b].end, n_pad, d, key_pairs, key_pairs + head_words / 2);
    }
  });
  return packed;
}

// What the tasks of one (example, head) `bh` read: its packed keys and values (from pack_heads_bf16) and key layout.
struct PackedHead {
  int64_t b, h;
  const KeyLayout& layout;
  const uint32_t* key_pairs;
  const uint32_t* value_pairs;
  const float* bias;  // the layout's hole bias, or null
  PackedHead(int64_t bh, int64_t heads, const std::vector<uint32_t>& packed, int64_t head_words,
             const std::vector<KeyLayout>& layouts)
      : b(bh / heads), h(bh % heads), layout(layouts[b]), key_pairs(packed.data() + bh * head_words),
        value_pairs(key_pairs + head_words / 2), bias(layout.bias.empty() ? nullptr : layout.bias.data()) {}
};

DTB_BF16_TARGET inline __m512 dot_pairs(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

// The lanes of the 16 keys [j, j + 16) below `end`.
inline __mmask16 keys_below(int64_t j, int64_t end) {
  const int64_t valid = end - j;
  return valid >= 16 ? __mmask16(0xFFFF) : valid <= 0 ? __mmask16(0) : __mmask16((1u << valid) - 1);
}

// The hole bias (0 or -inf) of keys [j, j + 16) on `lanes`, 0 elsewhere and where there is no bias (null).
inline __m512 hole_bias(__mmask16 lanes, const float* bias, int64_t j) {
  return bias != nullptr ? _mm512_maskz_loadu_ps(lanes, bias + j) : _mm512_setzero_ps();
}

// Finished scores of 16 keys: raw * scale + bias on `lanes`, -inf on the others (keys at or past the last valid).
inline __m512 finished_scores(__m512 raw, __mmask16 lanes, __m512 scaled, __m512 bias) {
  return _mm512_mask_blend_ps(lanes, _mm512_set1_ps(kNegInf), _mm512_fmadd_ps(raw, scaled, bias));
}

// Scores of kRowTile query rows (rows past `rows` repeat the last one and are not stored) against keys [0, end),
// written up to the next multiple of kKeyStep (-inf past `end`), and each stored row's maximum in `row_max`.
DTB_BF16_TARGET void scores_bf16(const at::BFloat16* const* query_rows, int rows, const uint32_t* key_pairs,
                                 int64_t end, int64_t n_pad, int64_t d, float scale, const float* bias,
                                 float* scores, float* row_max) {
  const int64_t half = d / 2;
  const __m512 scaled = _mm512_set1_ps(scale);
  __m512 running_max[kRowTile];
  for (int r = 0; r < kRowTile; ++r) {
    running_max[r] = _mm512_set1_ps(kNegInf);
  }
  for (int64_t j = 0; j < end; j += kKeyStep) {
    __m512 low[kRowTile], high[kRowTile];
    for (int r = 0; r < kRowTile; ++r) {
      low[r] = _mm512_setzero_ps();
      high[r] = _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < half; ++p) {
      const __m512i keys_low = _mm512_loadu_si512(key_pairs + p * n_pad + j);
      const __m512i keys_high = _mm512_loadu_si512(key_pairs + p * n_pad + j + 16);
      for (int r = 0; r < kRowTile; ++r) {
        const __m512i q = _mm512_set1_epi32(static_cast<int>(pair_at(query_rows[r], 2 * p)));
        low[r] = dot_pairs(low[r], q, keys_low);
        high[r] = dot_pairs(high[r], q, keys_high);
      }
    }
    // Lanes past `end` (zero keys) become -inf; holes get their -inf bias.
    const __mmask16 valid_low = keys_below(j, end), valid_high = keys_below(j + 16, end);
    const __m512 bias_low = hole_bias(valid_low, bias, j), bias_high = hole_bias(valid_high, bias, j + 16);
    for (int r = 0; r < rows; ++r) {
      float* out = scores + r * n_pad + j;
      const __m512 first = finished_scores(low[r], valid_low, scaled, bias_low);
      const __m512 second = finished_scores(high[r], valid_high, scaled, bias_high);
      _mm512_storeu_ps(out, first);
      _mm512_storeu_ps(out + 16, second);
      running_max[r] = _mm512_max_ps(running_max[r], _mm512_max_ps(first, second));
    }
  }
  for (int r = 0; r < rows; ++r) {
    row_max[r] = _mm512_reduce_max_ps(running_max[r]);
  }
}

// exp(x) for x <= 0 (a score minus its row's maximum), with a relative error below 3e-6: far below the bf16
// rounding the probabilities get next, and about a third of the instructions of ATen's exp_u20. 2^(x log2 e) is
// split into 2^n (VSCALEFPS) and 2^f, f in [-1/2, 1/2], by its degree-5 Taylor polynomial. Below -87 (where exp
// underflows float32, and for masked keys, -inf) the result is exactly 0.
inline __m512 exp_nonpositive(__m512 x) {
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.3333558146e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108665e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650696e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718056e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __mmask16 representable = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GT_OQ);
  return _mm512_maskz_scalef_ps(representable, p, n);
}

// One row's softmax numerators from its scores (written by scores_bf16 up to `stop`, a multiple of 32 past the
// last valid key, -inf past it): exp(score - row_max) rounded to bf16 pairs into `pairs`, and in float32 back into
// the row when `keep_float` (for the significance). Returns 1 / sum (of the float32 values), or 0 when every key
// is masked (the row's pairs are then zeros).
DTB_BF16_TARGET float exponentiate_bf16(float* row, int64_t stop, float row_max, bool keep_float, uint32_t* pairs) {
  if (row_max == kNegInf) {
    std::fill(pairs, pairs + stop / 2, 0u);
    if (keep_float) {
      std::fill(row, row + stop, 0.0f);
    }
    return 0.0f;
  }
  const __m512 shift = _mm512_set1_ps(row_max);
  __m512 sum_low = _mm512_setzero_ps(), sum_high = _mm512_setzero_ps();
  for (int64_t k = 0; k < stop; k += 32) {
    const __m512 low = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + k), shift));
    const __m512 high = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + k + 16), shift));
    sum_low = _mm512_add_ps(sum_low, low);
    sum_high = _mm512_add_ps(sum_high, high);
    _mm512_storeu_si512(pairs + k / 2, (__m512i)_mm512_cvtne2ps_pbh(high, low));
    if (keep_float) {
      _mm512_storeu_ps(row + k, low);
      _mm512_storeu_ps(row + k + 16, high);
    }
  }
  return 1.0f / _mm512_reduce_add_ps(_mm512_add_ps(sum_low, sum_high));
}

// Output columns [c, c + 16 * kBlocks) of kRowTile rows: sum over key pairs of probability pairs x value pairs.
template <int kBlocks>
DTB_BF16_TARGET void weighted_values_bf16(const uint32_t* const* prob_pairs, int rows, const uint32_t* value_pairs,
                                          int64_t key_pair_count, int64_t d, int64_t c, const float* inverse,
                                          at::BFloat16* const* out_rows) {
  __m512 acc[kRowTile][kBlocks];
  for (int r = 0; r < kRowTile; ++r) {
    for (int blk = 0; blk < kBlocks; ++blk) {
      acc[r][blk] = _mm512_setzero_ps();
    }
  }
  for (int64_t jp = 0; jp < key_pair_count; ++jp) {
    __m512i values[kBlocks];
    for (int blk = 0; blk < kBlocks; ++blk) {
      values[blk] = _mm512_loadu_si512(value_pairs + jp * d + c + 16 * blk);
    }
    for (int r = 0; r < kRowTile; ++r) {
      const __m512i p = _mm512_set1_epi32(static_cast<int>(prob_pairs[r][jp]));
      for (int blk = 0; blk < kBlocks; ++blk) {
        acc[r][blk] = dot_pairs(acc[r][blk], p, values[blk]);
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    const __m512 scale = _mm512_set1_ps(inverse[r]);
    for (int blk = 0; blk < kBlocks; ++blk) {
      const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_mul_ps(acc[r][blk], scale));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out_rows[r] + c + 16 * blk), (__m256i)rounded);
    }
  }
}

void attend_bf16(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                 const std::vector<KeyLayout>& layouts, double scale, int64_t block,
                 const SignificancePartials& partials, at::Tensor& out) {
  const int64_t batch = query.size(0), heads = query.size(1), length = query.size(2), d = query.size(3);
  const int64_t n_pad = (length + kKeyStep - 1) / kKeyStep * kKeyStep;
  const int64_t head_words = n_pad * d;  // 32-bit words of one head's packed keys (and again of its values)
  const Strides qs(query), os(out);
  const std::vector<uint32_t> packed = pack_heads_bf16(key, value, layouts, n_pad);
  const int64_t blocks = (length + block - 1) / block;
  const at::BFloat16* query_data = query.const_data_ptr<at::BFloat16>();
  at::BFloat16* out_data = out.mutable_data_ptr<at::BFloat16>();
  at::parallel_for(0, batch * heads * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(kRowTile * n_pad);
    std::vector<uint32_t> pairs(kRowTile * n_pad / 2);
    for (int64_t task = begin; task < end; ++task) {
      const PackedHead head(task / blocks, heads, packed, head_words, layouts);
      const auto& [b, h, layout, key_pairs, value_pairs, bias] = head;
      const int64_t key_pair_count = (layout.end + 1) / 2;
      const int64_t row_end = std::min(length, (task % blocks + 1) * block);
      for (int64_t i = (task % blocks) * block; i < row_end; i += kRowTile) {
        const int rows = static_cast<int>(std::min<int64_t>(kRowTile, row_end - i));
        const at::BFloat16* query_rows[kRowTile];
        at::BFloat16* out_rows[kRowTile];
        const uint32_t* prob_pairs[kRowTile];
        float inverse[kRowTile];
        for (int r = 0; r < kRowTile; ++r) {
          const int64_t row = i + std::min(r, rows - 1);
          query_rows[r] = query_data + b * qs.batch + h * qs.head + row * qs.row;
          out_rows[r] = out_data + b * os.batch + h * os.head + row * os.row;
          prob_pairs[r] = pairs.data() + std::min(r, rows - 1) * n_pad / 2;
        }
        float row_max[kRowTile];
        scores_bf16(query_rows, rows, key_pairs, layout.end, n_pad, d, static_cast<float>(scale), bias, scores.data(),
                    row_max);
        // Past the last valid key the scores are -inf, so the odd key's partner in the last pair gets weight 0.
        const int64_t stop = (layout.end + kKeyStep - 1) / kKeyStep * kKeyStep;
        for (int r = 0; r < rows; ++r) {
          inverse[r] = exponentiate_bf16(scores.data() + r * n_pad, stop, row_max[r], partials.data != nullptr,
                                         pairs.data() + r * n_pad / 2);
        }
        // From the float32 probabilities, before they were rounded for the product with the values.
        partials.add(task, b, i, scores.data(), n_pad, rows, inverse, layout.end);
        int64_t c = 0;
        for (; c + 64 <= d; c += 64) {
          weighted_values_bf16<4>(prob_pairs, rows, value_pairs, key_pair_count, d, c, inverse, out_rows);
        }
        switch ((d - c) / 16) {
          case 3:
            weighted_values_bf16<3>(prob_pairs, rows, value_pairs, key_pair_count, d, c, inverse, out_rows);
            break;
          case 2:
            weighted_values_bf16<2>(prob_pairs, rows, value_pairs, key_pair_count, d, c, inverse, out_rows);
            break;
          case 1:
            weighted_values_bf16<1>(prob_pairs, rows, value_pairs, key_pair_count, d, c, inverse, out_rows);
            break;
          default:
            break;
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// bf16 path on AMX tiles (CPUs with AMX-BF16, e.g. Sapphire Rapids; ../cpu_capability.h cpu_amx_attention). On a
// 2-core Sapphire Rapids the VDPBF16PS loops above reached about 45 GFLOP/s per core at 12 heads of 184 tokens
// (d = 32), no faster than torch's SDPA there, and at 384 tokens half its speed, while the same two products as
// AMX matmuls (oneDNN bmm) took a quarter of the time. Here TDPBF16PS multiplies 16 x 32 bf16 tiles into
// 16 x 16 float32 tiles: 16 query rows at a time, the scores a pair of 16-key tiles per step, the product with the
// values two 16-column tiles per step. The packed keys and values are the layouts the dot products above read,
// which are exactly AMX's pair-interleaved ("VNNI") B operands. Between the products, the scaling, masking,
// softmax and bf16 rounding are the AVX-512 code above, so both paths compute the same quantities.

#define DTB_AMX_TARGET DTB_AMX_BF16_TARGET

// The shared tile configuration (amx.h), every register 16 rows x 64 bytes (32 bf16 or 16 float32). Tile register
// use here: 0, 1 accumulators (C); 2 the A operand (query or probability rows); 3, 4 B operands.
using amx::TileScope;

constexpr int64_t kAmxDepth = 32;   // bf16 elements one TDPBF16PS sums over (16 pairs)
static_assert(kAmxRows == amx::kTileRows, "the AMX path's row tile is the shared configuration's tile rows");

// Scales one row's raw scores [0, stop) in place, adds the hole bias, sets keys at or past `end` to -inf (as
// scores_bf16 does) and returns the row's maximum.
float finish_scores(float* row, int64_t end, int64_t stop, float scale, const float* bias) {
  const __m512 scaled = _mm512_set1_ps(scale);
  __m512 running_max = _mm512_set1_ps(kNegInf);
  for (int64_t j = 0; j < stop; j += 16) {
    const __mmask16 lanes = keys_below(j, end);
    const __m512 s = finished_scores(_mm512_loadu_ps(row + j), lanes, scaled, hole_bias(lanes, bias, j));
    _mm512_storeu_ps(row + j, s);
    running_max = _mm512_max_ps(running_max, s);
  }
  return _mm512_reduce_max_ps(running_max);
}

// One 16 x 32 float32 block of a product, out[r][n] (row stride `out_stride` floats) = sum over k < depth of
// a[r][k] b(k, n): `a` is 16 rows of bf16 (row stride `a_stride` elements), `b` pair-interleaved, row k/2 at
// b + (k / 2) * b_stride holding the pairs (k, k + 1) of the 32 columns. depth is a multiple of 32.
DTB_AMX_TARGET void tile_product(const at::BFloat16* a, int64_t a_stride, const uint32_t* b, int64_t b_stride,
                                 int64_t depth, float* out, int64_t out_stride) {
  _tile_zero(0);
  _tile_zero(1);
  for (int64_t k = 0; k < depth; k += kAmxDepth) {
    _tile_loadd(2, a + k, a_stride * sizeof(at::BFloat16));
    const uint32_t* rows = b + (k / 2) * b_stride;
    _tile_loadd(3, rows, b_stride * sizeof(uint32_t));
    _tile_loadd(4, rows + 16, b_stride * sizeof(uint32_t));
    _tile_dpbf16ps(0, 2, 3);
    _tile_dpbf16ps(1, 2, 4);
  }
  _tile_stored(0, out, out_stride * sizeof(float));
  _tile_stored(1, out + 16, out_stride * sizeof(float));
}

// Raw scores of a 16-row query tile `q` ([16][d] bf16) against keys [0, stop): scores[r * n_pad + j] = q_r . k_j.
// The keys' pairs (key_pairs[p * n_pad + j]: dimensions 2p, 2p + 1 of key j) are the B operand as they are.
void scores_amx(const at::BFloat16* q, int64_t d, const uint32_t* key_pairs, int64_t n_pad, int64_t stop,
                float* scores) {
  for (int64_t j = 0; j < stop; j += 32) {
    tile_product(q, d, key_pairs + j, n_pad, d, scores + j, n_pad);
  }
}

// Unnormalised outputs of a 16-row tile: out[r * d + c] = sum over keys [0, stop) of p_rj v_jc, with `probs` the
// rows' bf16 probabilities ([16][n_pad] bf16, as pairs) and `value_pairs` [n_pad/2][d] pairs (the B operand).
void weighted_values_amx(const uint32_t* probs, int64_t n_pad, const uint32_t* value_pairs, int64_t d, int64_t stop,
                         float* out) {
  const at::BFloat16* probabilities = reinterpret_cast<const at::BFloat16*>(probs);
  for (int64_t c = 0; c < d; c += 32) {
    tile_product(probabilities, n_pad, value_pairs + c, d, stop, out + c, d);
  }
}

// Output rows r < rows: out[r * row_stride + c] = bf16(weighted[r * d + c] * inverse[r]), d a multiple of 16.
DTB_BF16_TARGET void store_normalised(const float* weighted, int rows, int64_t d, const float* inverse,
                                      at::BFloat16* out, int64_t row_stride) {
  for (int r = 0; r < rows; ++r) {
    const __m512 normalise = _mm512_set1_ps(inverse[r]);
    for (int64_t c = 0; c < d; c += 16) {
      const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(weighted + r * d + c), normalise);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * row_stride + c), (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

// The bf16 attention on AMX tiles, d a multiple of 32; `block` from rows_per_block(..., kAmxRows).
void attend_amx(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                const std::vector<KeyLayout>& layouts, double scale, int64_t block,
                const SignificancePartials& partials, at::Tensor& out) {
  const int64_t batch = query.size(0), heads = query.size(1), length = query.size(2), d = query.size(3);
  const int64_t n_pad = (length + kKeyStep - 1) / kKeyStep * kKeyStep;
  const int64_t head_words = n_pad * d;
  const Strides qs(query), os(out);
  const std::vector<uint32_t> packed = pack_heads_bf16(key, value, layouts, n_pad);
  const int64_t blocks = (length + block - 1) / block;
  const at::BFloat16* query_data = query.const_data_ptr<at::BFloat16>();
  at::BFloat16* out_data = out.mutable_data_ptr<at::BFloat16>();
  const float scale_f = static_cast<float>(scale);
  at::parallel_for(0, batch * heads * blocks, 1, [&](int64_t begin, int64_t end) {
    const TileScope tiles;
    // Tile loads read all 16 rows, so every buffer holds 16 rows; rows past the block's last are never stored.
    std::vector<at::BFloat16> q(kAmxRows * d);
    std::vector<float> scores(kAmxRows * n_pad);
    std::vector<uint32_t> pairs(kAmxRows * n_pad / 2);
    std::vector<float> weighted(kAmxRows * d);
    for (int64_t task = begin; task < end; ++task) {
      const PackedHead head(task / blocks, heads, packed, head_words, layouts);
      const auto& [b, h, layout, key_pairs, value_pairs, bias] = head;
      // Keys are computed in steps of 32; past the last valid key the scores are -inf and the probabilities 0.
      const int64_t stop = (layout.end + kKeyStep - 1) / kKeyStep * kKeyStep;
      const int64_t row_end = std::min(length, (task % blocks + 1) * block);
      for (int64_t i = (task % blocks) * block; i < row_end; i += kAmxRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kAmxRows, row_end - i));
        const at::BFloat16* first_query = query_data + b * qs.batch + h * qs.head + i * qs.row;
        for (int r = 0; r < rows; ++r) {
          std::memcpy(q.data() + r * d, first_query + r * qs.row, d * sizeof(at::BFloat16));
        }
        float inverse[kAmxRows];
        if (stop > 0) {
          scores_amx(q.data(), d, key_pairs, n_pad, stop, scores.data());
        }
        for (int r = 0; r < rows; ++r) {
          float* row = scores.data() + r * n_pad;
          const float row_max = finish_scores(row, layout.end, stop, scale_f, bias);
          inverse[r] = exponentiate_bf16(row, stop, row_max, partials.data != nullptr, pairs.data() + r * n_pad / 2);
        }
        partials.add(task, b, i, scores.data(), n_pad, rows, inverse, layout.end);
        if (stop > 0) {
          weighted_values_amx(pairs.data(), n_pad, value_pairs, d, stop, weighted.data());
        } else {
          std::fill(weighted.begin(), weighted.end(), 0.0f);
        }
        store_normalised(weighted.data(), rows, d, inverse, out_data + b * os.batch + h * os.head + i * os.row,
                         os.row);
      }
    }
  });
}
#endif  // CPU_CAPABILITY_AVX512

// Shared by attention and attention_with_significance: writes `out` [B, H, n, d] (a view of [B, n, H, d]) and,
// when `significance` is defined, significance [B, n].
void attend(const at::Tensor& query_in, const at::Tensor& key_in, const at::Tensor& value_in,
            const std::optional<at::Tensor>& mask, double scale, at::Tensor& out, at::Tensor& significance) {
  // Only the last dimension must be contiguous: the [B, n, H, d] views of a fused QKV projection are read in place.
  const auto last_contiguous = [](const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  const at::Tensor query = last_contiguous(query_in), key = last_contiguous(key_in), value = last_contiguous(value_in);
  const int64_t batch = query.size(0), heads = query.size(1), length = query.size(2);
  at::Tensor valid;
  if (mask.has_value()) {
    valid = (mask->scalar_type() == at::kBool ? *mask : mask->ne(0)).contiguous();
  }
  const std::vector<KeyLayout> layouts = key_layouts(valid, batch, length);
  enum class Path { kAmx, kDotProducts, kFloat };
  Path path = Path::kFloat;
#if defined(CPU_CAPABILITY_AVX512)
  if (query.scalar_type() == at::kBFloat16 && query.size(3) % 32 == 0 && ::dtb::cpu::cpu_amx_attention()) {
    path = Path::kAmx;
  } else if (query.scalar_type() == at::kBFloat16 && query.size(3) % 16 == 0 && ::dtb::cpu::cpu_has_avx512_bf16()) {
    path = Path::kDotProducts;
  }
#endif
  // The AMX path computes whole 16-row tiles. The blocks fix the tasks, so results do not depend on the threads.
  const int64_t block = rows_per_block(batch, heads, length, path == Path::kAmx ? kAmxRows : kRowTile);
  const int64_t tasks_per_example = heads * ((length + block - 1) / block);
  std::vector<float> partial_buffer;
  SignificancePartials partials;
  if (significance.defined()) {
    partials.stride = length;
    partial_buffer.assign(static_cast<size_t>(batch * tasks_per_example * length), 0.0f);
    partials.data = partial_buffer.data();
    partials.valid = valid.defined() ? valid.const_data_ptr<bool>() : nullptr;
  }
#if defined(CPU_CAPABILITY_AVX512)
  if (path == Path::kAmx) {
    attend_amx(query, key, value, layouts, scale, block, partials, out);
  } else if (path == Path::kDotProducts) {
    attend_bf16(query, key, value, layouts, scale, block, partials, out);
  } else
#endif
  {
    switch (query.scalar_type()) {
      case at::kBFloat16:
        attend_float<at::BFloat16>(query, key, value, layouts, scale, block, partials, out);
        break;
      case at::kHalf:
        attend_float<at::Half>(query, key, value, layouts, scale, block, partials, out);
        break;
      default:
        attend_float<float>(query, key, value, layouts, scale, block, partials, out);
        break;
    }
  }
  if (significance.defined()) {
    sum_partials(partials, batch, tasks_per_example, length, significance);
  }
}

// Written as [B, n, H, d] and returned as its [B, H, n, d] view: the caller's transpose back to [B, n, H * d] is
// then free.
at::Tensor empty_output(const at::Tensor& query) {
  return at::empty({query.size(0), query.size(2), query.size(1), query.size(3)}, query.options()).transpose(1, 2);
}

}  // namespace

at::Tensor attention_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                         const std::optional<at::Tensor>& mask, double scale) {
  check_attention_inputs(query, key, value, mask);
  at::Tensor out = empty_output(query);
  at::Tensor no_significance;
  if (out.numel() > 0) {
    attend(query, key, value, mask, scale, out, no_significance);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> attention_with_significance_cpu(const at::Tensor& query, const at::Tensor& key,
                                                                   const at::Tensor& value, const at::Tensor& mask,
                                                                   double scale) {
  check_attention_inputs(query, key, value, mask);
  at::Tensor out = empty_output(query);
  at::Tensor significance = at::zeros({query.size(0), query.size(2)}, query.options().dtype(at::kFloat));
  if (out.numel() > 0) {
    attend(query, key, value, mask, scale, out, significance);
  }
  return {out, significance};
}

}  // namespace dtb::CPU_CAPABILITY
