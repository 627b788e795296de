// CPU kernels of the two float passes around an int8 matmul (dtb_ext/precision/int8.py):
//
// dtb::quantize_rows: x [M, K] (float32 or bfloat16), divisor [K] or none -> quantized [M, K] uint8, scale [M]
//   float32. Per row m: v = x[m] / divisor (float32), scale[m] = max(max|v| / 127, 1e-12),
//   quantized[m] = round_half_even(v / scale[m]) + 128, so the int8 value round(v / scale) is stored with zero
//   point 128 (the unsigned source format oneDNN's int8 matmuls take) and lies in [1, 255].
// dtb::dequantize_rows: product [M, N] float32 (the matmul's int32 sums times the weights' per-channel scales),
//   scale [M], bias [N] or none, residual [M, N] or none -> [M, N] in `dtype`:
//   act(product * scale[m] + bias) + residual, with act none, GELU (erf) or GELU (tanh), rounded once.
//
// One pass over each row instead of the 4-6 elementwise ATen ops (and their temporaries) the same arithmetic
// takes in PyTorch; both match dtb_ext/reference.py's quantize_rows / dequantize_rows (quantize_rows bit for bit).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../cpu_capability.h"
#include "../op_checks.h"

// Compiled once per instruction set, into dtb::DEFAULT, dtb::AVX2 and dtb::AVX512 (see ../cpu_capability.h).
namespace dtb::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using Vec = Vectorized<float>;

constexpr float kQuantMax = 127.0f;
constexpr float kMinScale = 1e-12f;
constexpr float kZeroPoint = 128.0f;

// Rows per parallel task: about at::internal::GRAIN_SIZE elements, as ATen's own kernels use, so that a small
// matrix stays on the calling thread.
int64_t row_grain(int64_t columns) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, columns));
}

// max |values[0:columns]|.
float absolute_max(const float* values, int64_t columns) {
  Vec running(0.0f);
  int64_t k = 0;
  for (; k + Vec::size() <= columns; k += Vec::size()) {
    running = at::vec::maximum(running, Vec::loadu(values + k).abs());
  }
  float highest = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, running);
  for (; k < columns; ++k) {
    highest = std::max(highest, std::abs(values[k]));
  }
  return highest;
}

template <typename scalar_t>
void quantize_rows_kernel(const scalar_t* x, const float* divisor, uint8_t* quantized, float* scale, int64_t rows,
                          int64_t columns) {
  at::parallel_for(0, rows, row_grain(columns), [&](int64_t begin, int64_t end) {
    std::vector<float> values(columns);
    for (int64_t m = begin; m < end; ++m) {
      at::vec::convert(x + m * columns, values.data(), columns);
      if (divisor != nullptr) {
        at::vec::map2([](Vec v, Vec d) { return v / d; }, values.data(), values.data(), divisor, columns);
      }
      const float row_scale = std::max(absolute_max(values.data(), columns) / kQuantMax, kMinScale);
      scale[m] = row_scale;
      // v / scale lies in [-127, 127] by construction of the scale, so no clamp is needed. Vectorized::round and
      // std::nearbyint round half to even, as torch.round does.
      const Vec scale_vec(row_scale);
      const Vec zero_point(kZeroPoint);
      at::vec::map([&](Vec v) { return (v / scale_vec).round() + zero_point; }, values.data(), values.data(),
                   columns);
      uint8_t* out = quantized + m * columns;
      for (int64_t k = 0; k < columns; ++k) {
        out[k] = static_cast<uint8_t>(values[k]);
      }
    }
  });
}

enum class Activation { kNone, kGeluErf, kGeluTanh };

Activation parse_activation(const std::string& name) {
  if (name == "none") {
    return Activation::kNone;
  }
  if (name == "gelu") {
    return Activation::kGeluErf;
  }
  if (name == "gelu_tanh") {
    return Activation::kGeluTanh;
  }
  TORCH_CHECK(false, "dtb::dequantize_rows: activation must be \"none\", \"gelu\" or \"gelu_tanh\", got \"", name,
              "\"");
}

// GELU on a vector, as torch.nn.functional.gelu computes it in float32 (approximate="none" / "tanh").
template <Activation activation>
Vec apply_activation(Vec x) {
  if constexpr (activation == Activation::kGeluErf) {
    const Vec half(0.5f);
    const Vec one(1.0f);
    const Vec inv_sqrt2(static_cast<float>(M_SQRT1_2));
    return half * x * (one + (x * inv_sqrt2).erf());
  } else if constexpr (activation == Activation::kGeluTanh) {
    const Vec half(0.5f);
    const Vec one(1.0f);
    const Vec sqrt_2_over_pi(static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5));
    const Vec cubic(0.044715f);
    return half * x * (one + (sqrt_2_over_pi * (x + cubic * x * x * x)).tanh());
  } else {
    return x;
  }
}

template <typename scalar_t, Activation activation>
void dequantize_rows_kernel(const float* product, const float* scale, const float* bias, const scalar_t* residual,
                            scalar_t* out, int64_t rows, int64_t columns) {
  at::parallel_for(0, rows, row_grain(columns), [&](int64_t begin, int64_t end) {
    std::vector<float> values(columns);
    std::vector<float> added(residual != nullptr ? columns : 0);
    for (int64_t m = begin; m < end; ++m) {
      const Vec row_scale(scale[m]);
      const float* source = product + m * columns;
      if (bias != nullptr) {
        at::vec::map2([&](Vec p, Vec b) { return apply_activation<activation>(p * row_scale + b); }, values.data(),
                      source, bias, columns);
      } else {
        at::vec::map([&](Vec p) { return apply_activation<activation>(p * row_scale); }, values.data(), source,
                     columns);
      }
      if (residual != nullptr) {
        at::vec::convert(residual + m * columns, added.data(), columns);
        at::vec::map2([](Vec v, Vec r) { return v + r; }, values.data(), values.data(), added.data(), columns);
      }
      at::vec::convert(values.data(), out + m * columns, columns);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_rows_cpu(const at::Tensor& x_in,
                                                     const std::optional<at::Tensor>& divisor_in) {
  check_quantize_rows_inputs(x_in, divisor_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0);
  const int64_t columns = x.size(1);
  at::Tensor quantized = at::empty({rows, columns}, x.options().dtype(at::kByte));
  at::Tensor scale = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor divisor;
  if (divisor_in.has_value()) {
    divisor = divisor_in->contiguous();
  }
  const float* divisor_data = divisor.defined() ? divisor.const_data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "quantize_rows_cpu", [&] {
    quantize_rows_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), divisor_data, quantized.mutable_data_ptr<uint8_t>(),
                                   scale.mutable_data_ptr<float>(), rows, columns);
  });
  return {quantized, scale};
}

at::Tensor dequantize_rows_cpu(const at::Tensor& product_in, const at::Tensor& scale_in,
                               const std::optional<at::Tensor>& bias_in, const std::optional<at::Tensor>& residual_in,
                               c10::string_view activation_name, at::ScalarType dtype) {
  check_dequantize_rows_inputs(product_in, scale_in, bias_in, residual_in, dtype);
  const Activation activation = parse_activation(std::string(activation_name));
  const at::Tensor product = product_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const at::Tensor residual = residual_in.has_value() ? residual_in->contiguous() : at::Tensor();
  const int64_t rows = product.size(0);
  const int64_t columns = product.size(1);
  at::Tensor out = at::empty({rows, columns}, product.options().dtype(dtype));
  const float* bias_data = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "dequantize_rows_cpu", [&] {
    const scalar_t* residual_data = residual.defined() ? residual.const_data_ptr<scalar_t>() : nullptr;
    const float* product_data = product.const_data_ptr<float>();
    const float* scale_data = scale.const_data_ptr<float>();
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    switch (activation) {
      case Activation::kNone:
        dequantize_rows_kernel<scalar_t, Activation::kNone>(product_data, scale_data, bias_data, residual_data,
                                                            out_data, rows, columns);
        break;
      case Activation::kGeluErf:
        dequantize_rows_kernel<scalar_t, Activation::kGeluErf>(product_data, scale_data, bias_data, residual_data,
                                                               out_data, rows, columns);
        break;
      case Activation::kGeluTanh:
        dequantize_rows_kernel<scalar_t, Activation::kGeluTanh>(product_data, scale_data, bias_data, residual_data,
                                                                out_data, rows, columns);
        break;
    }
  });
  return out;
}

}  // namespace

DTB_CPU_KERNELS(m) {
  m.impl("quantize_rows", &quantize_rows_cpu);
  m.impl("dequantize_rows", &dequantize_rows_cpu);
}

}  // namespace dtb::CPU_CAPABILITY
