// Argument checks shared by the CPU and CUDA implementations of the dtb ops. Every failure is a TORCH_CHECK
// (a RuntimeError in Python) whose message names the argument, what was expected and what was given.
//
// Each op's check comes in two parts: `*_shapes` reads only metadata (shapes, dtypes, devices, scalar
// arguments); `check_keep_counts` / `check_position_range` / `check_distinct_positions` read tensor values, which
// on CUDA costs a device-to-host copy. `check_select_inputs` and `check_restore_inputs` run both parts (the CPU
// kernels call them); the CUDA binding runs the value part only while its stream is not being captured into a CUDA
// graph.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dtb {

inline void check_same_device(const char* op, const at::Tensor& first, const char* first_name, const at::Tensor& other,
                              const char* other_name) {
  TORCH_CHECK(other.device() == first.device(), op, ": ", other_name, " must be on the device of ", first_name, " (",
              first.device(), "), got ", other.device());
}

inline void check_floating(const char* op, const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(at::isFloatingType(tensor.scalar_type()), op, ": ", name,
              " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
              tensor.scalar_type());
}

// Smallest and largest value of an integer tensor with at least one element. On CUDA this costs one small
// device-to-host copy (a synchronisation), which is why the CUDA binding calls the value checks only outside
// CUDA-graph capture; it is what lets bad counts and positions fail with a message.
inline std::pair<int64_t, int64_t> min_max_values(const at::Tensor& values) {
  if (values.is_cpu()) {
    // A plain loop: the int64 counts and positions are small, and ATen reductions would cost more in dispatch.
    const at::Tensor contiguous = values.contiguous();
    const int64_t* data = contiguous.const_data_ptr<int64_t>();
    const auto [lowest, highest] = std::minmax_element(data, data + contiguous.numel());
    return {*lowest, *highest};
  }
  auto extremes = at::aminmax(values);
  auto on_host = at::stack({std::get<0>(extremes), std::get<1>(extremes)}).to(at::kCPU, at::kLong);
  return {on_host[0].item<int64_t>(), on_host[1].item<int64_t>()};
}

inline void check_softmax_inputs(const at::Tensor& scores, const at::Tensor& mask) {
  constexpr const char* op = "dtb::softmax_with_significance";
  TORCH_CHECK(scores.dim() == 4 && scores.size(2) == scores.size(3), op,
              ": scores must be [B, H, L, L] (4-D, square in the last two dims), got shape ", scores.sizes());
  check_floating(op, scores, "scores");
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == scores.size(0) && mask.size(1) == scores.size(3), op,
              ": mask must be [B, L] = [", scores.size(0), ", ", scores.size(3), "] to match scores of shape ",
              scores.sizes(), ", got shape ", mask.sizes());
  check_same_device(op, scores, "scores", mask, "mask");
}

inline void check_select_shapes(const at::Tensor& hidden, const at::Tensor& significance, const at::Tensor& mask,
                                const at::Tensor& keep, int64_t max_keep) {
  constexpr const char* op = "dtb::select_and_gather";
  TORCH_CHECK(hidden.dim() == 3, op, ": hidden must be [B, L, D], got shape ", hidden.sizes());
  const int64_t batch = hidden.size(0);
  const int64_t length = hidden.size(1);
  TORCH_CHECK(significance.dim() == 2 && significance.size(0) == batch && significance.size(1) == length, op,
              ": significance must be [B, L] = [", batch, ", ", length, "] to match hidden of shape ", hidden.sizes(),
              ", got shape ", significance.sizes());
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == batch && mask.size(1) == length, op, ": mask must be [B, L] = [",
              batch, ", ", length, "] to match hidden of shape ", hidden.sizes(), ", got shape ", mask.sizes());
  TORCH_CHECK(keep.dim() == 1 && keep.size(0) == batch, op, ": keep must be [B] = [", batch,
              "] to match hidden of shape ", hidden.sizes(), ", got shape ", keep.sizes());
  TORCH_CHECK(keep.scalar_type() == at::kLong, op, ": keep must be int64, got ", keep.scalar_type());
  check_floating(op, significance, "significance");
  check_same_device(op, hidden, "hidden", significance, "significance");
  check_same_device(op, hidden, "hidden", mask, "mask");
  check_same_device(op, hidden, "hidden", keep, "keep");
  TORCH_CHECK(max_keep >= 0 && max_keep <= length, op, ": max_keep must be in [0, L] = [0, ", length, "], got ",
              max_keep);
}

// keep: [B] int64; every count must be in [1, length] and at most max_keep.
inline void check_keep_counts(const at::Tensor& keep, int64_t length, int64_t max_keep) {
  constexpr const char* op = "dtb::select_and_gather";
  if (keep.numel() == 0) {
    return;
  }
  const auto [fewest, most] = min_max_values(keep);
  TORCH_CHECK(fewest >= 1 && most <= length, op, ": every keep count must be in [1, L] = [1, ", length,
              "], got counts from ", fewest, " to ", most);
  TORCH_CHECK(most <= max_keep, op, ": max_keep must be at least max(keep) = ", most, ", got ", max_keep);
}

inline void check_select_inputs(const at::Tensor& hidden, const at::Tensor& significance, const at::Tensor& mask,
                                const at::Tensor& keep, int64_t max_keep) {
  check_select_shapes(hidden, significance, mask, keep, max_keep);
  check_keep_counts(keep, hidden.size(1), max_keep);
}

inline void check_restore_shapes(const at::Tensor& base, const at::Tensor& src, const at::Tensor& positions) {
  constexpr const char* op = "dtb::restore";
  TORCH_CHECK(base.dim() == 3, op, ": base must be [B, L0, D], got shape ", base.sizes());
  TORCH_CHECK(src.dim() == 3 && src.size(0) == base.size(0) && src.size(2) == base.size(2), op,
              ": src must be [B, K, D] with B = ", base.size(0), " and D = ", base.size(2),
              " to match base of shape ", base.sizes(), ", got shape ", src.sizes());
  TORCH_CHECK(positions.dim() == 2 && positions.size(0) == src.size(0) && positions.size(1) == src.size(1), op,
              ": positions must be [B, K] = [", src.size(0), ", ", src.size(1), "] to match src of shape ",
              src.sizes(), ", got shape ", positions.sizes());
  TORCH_CHECK(positions.scalar_type() == at::kLong, op, ": positions must be int64, got ", positions.scalar_type());
  check_floating(op, base, "base");
  check_floating(op, src, "src");
  check_same_device(op, base, "base", src, "src");
  check_same_device(op, base, "base", positions, "positions");
}

// positions: [B, K] int64; every value must be -1 (skip) or in [0, length).
inline void check_position_range(const at::Tensor& positions, int64_t length) {
  if (positions.numel() == 0) {
    return;
  }
  const auto [lowest, highest] = min_max_values(positions);
  TORCH_CHECK(lowest >= -1 && highest < length, "dtb::restore: positions must be -1 (skip) or in [0, L0) = [0, ",
              length, "), got values from ", lowest, " to ", highest);
}

inline void check_restore_inputs(const at::Tensor& base, const at::Tensor& src, const at::Tensor& positions) {
  check_restore_shapes(base, src, positions);
  check_position_range(positions, base.size(1));
}

// positions: [B, K] int64 on the CPU, already in range (check_position_range); no example may name one position
// twice. The CPU restore finds duplicates while building its slot table; the CUDA one calls this on the host only
// after its kernel has flagged one, to name it.
inline void check_distinct_positions(const at::Tensor& positions, int64_t length) {
  TORCH_INTERNAL_ASSERT(positions.is_cpu(), "check_distinct_positions reads positions on the host");
  const at::Tensor contiguous = positions.contiguous();
  const int64_t* data = contiguous.const_data_ptr<int64_t>();
  const int64_t slots = contiguous.size(1);
  std::vector<int64_t> slot_of(length);
  for (int64_t b = 0; b < contiguous.size(0); ++b) {
    std::fill(slot_of.begin(), slot_of.end(), -1);
    for (int64_t k = 0; k < slots; ++k) {
      const int64_t position = data[b * slots + k];
      if (position < 0) {
        continue;
      }
      TORCH_CHECK(slot_of[position] < 0, "dtb::restore: positions must be distinct within an example; example ", b,
                  " has position ", position, " at slots ", slot_of[position], " and ", k);
      slot_of[position] = k;
    }
  }
}

// query, key, value: [B, H, n, d] of one floating dtype (float32, bfloat16 or float16) on one device, d even;
// mask: absent, or [B, n] (bool or numbers, nonzero = a key to attend to).
inline void check_attention_inputs(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                   const std::optional<at::Tensor>& mask) {
  constexpr const char* op = "dtb::attention";
  TORCH_CHECK(query.dim() == 4, op, ": query must be [B, H, n, d] (4-D), got shape ", query.sizes());
  TORCH_CHECK(key.sizes() == query.sizes() && value.sizes() == query.sizes(), op,
              ": key and value must have the query's shape ", query.sizes(), " (self-attention), got key ",
              key.sizes(), " and value ", value.sizes());
  const auto dtype = query.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": query must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(key.scalar_type() == dtype && value.scalar_type() == dtype, op, ": key and value must be ", dtype,
              " like the query, got ", key.scalar_type(), " and ", value.scalar_type());
  TORCH_CHECK(query.size(3) % 2 == 0, op, ": the head size (last dim) must be even, got ", query.size(3));
  check_same_device(op, query, "query", key, "key");
  check_same_device(op, query, "query", value, "value");
  if (mask.has_value()) {
    TORCH_CHECK(mask->dim() == 2 && mask->size(0) == query.size(0) && mask->size(1) == query.size(2), op,
                ": mask must be [B, n] = [", query.size(0), ", ", query.size(2), "] to match query of shape ",
                query.sizes(), ", got shape ", mask->sizes());
    check_same_device(op, query, "query", *mask, "mask");
  }
}

// divisor: absent, or [K] float32 on the device of x [M, K].
inline void check_divisor(const at::Tensor& x, const std::optional<at::Tensor>& divisor, const char* op) {
  if (divisor.has_value()) {
    TORCH_CHECK(divisor->dim() == 1 && divisor->size(0) == x.size(1), op, ": divisor must be [K] = [", x.size(1),
                "] to match x of shape ", x.sizes(), ", got shape ", divisor->sizes());
    TORCH_CHECK(divisor->scalar_type() == at::kFloat, op, ": divisor must be float32, got ", divisor->scalar_type());
    check_same_device(op, x, "x", *divisor, "divisor");
  }
}

// x: [M, K] float32 or bfloat16; divisor: absent, or [K] float32 on x's device.
inline void check_quantize_rows_inputs(const at::Tensor& x, const std::optional<at::Tensor>& divisor) {
  constexpr const char* op = "dtb::quantize_rows";
  TORCH_CHECK(x.dim() == 2, op, ": x must be [M, K] (2-D), got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
              ": x must be float32 or bfloat16, got ", x.scalar_type());
  check_divisor(x, divisor, op);
}

// product: [M, N] float32; scale: [M] float32; bias: absent or [N] float32; residual: absent or [M, N] of `dtype`;
// dtype: float32 or bfloat16.
inline void check_dequantize_rows_inputs(const at::Tensor& product, const at::Tensor& scale,
                                         const std::optional<at::Tensor>& bias,
                                         const std::optional<at::Tensor>& residual, at::ScalarType dtype,
                                         const char* op = "dtb::dequantize_rows") {
  TORCH_CHECK(product.dim() == 2, op, ": product must be [M, N] (2-D), got shape ", product.sizes());
  TORCH_CHECK(product.scalar_type() == at::kFloat, op, ": product must be float32, got ", product.scalar_type());
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, op, ": dtype must be float32 or bfloat16, got ", dtype);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == product.size(0), op, ": scale must be [M] = [", product.size(0),
              "] to match product of shape ", product.sizes(), ", got shape ", scale.sizes());
  TORCH_CHECK(scale.scalar_type() == at::kFloat, op, ": scale must be float32, got ", scale.scalar_type());
  check_same_device(op, product, "product", scale, "scale");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == product.size(1), op, ": bias must be [N] = [", product.size(1),
                "] to match product of shape ", product.sizes(), ", got shape ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == at::kFloat, op, ": bias must be float32, got ", bias->scalar_type());
    check_same_device(op, product, "product", *bias, "bias");
  }
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == product.sizes(), op, ": residual must have product's shape ", product.sizes(),
                ", got ", residual->sizes());
    TORCH_CHECK(residual->scalar_type() == dtype, op, ": residual must be ", dtype, " (the output dtype), got ",
                residual->scalar_type());
    check_same_device(op, product, "product", *residual, "residual");
  }
}

// A LayerNorm weight or bias: absent, or [N] of `dtype` (the activations' dtype) on the device of product [M, N].
inline void check_layer_norm_parameter(const at::Tensor& product, const std::optional<at::Tensor>& parameter,
                                       const char* name, at::ScalarType dtype, const char* op) {
  if (parameter.has_value()) {
    TORCH_CHECK(parameter->dim() == 1 && parameter->size(0) == product.size(1), op, ": LayerNorm ", name,
                " must be [N] = [", product.size(1), "] to match product of shape ", product.sizes(), ", got shape ",
                parameter->sizes());
    TORCH_CHECK(parameter->scalar_type() == dtype, op, ": LayerNorm ", name, " must be ", dtype,
                " (the output dtype), got ", parameter->scalar_type());
    check_same_device(op, product, "product", *parameter, name);
  }
}

// The two layouts an int8 Linear's weight may come in, told apart by the tensor's layout:
// - kOneDnn: prepacked by onednn::qlinear_prepack, a MkldnnCPU int8 tensor of shape [K, N] (oneDNN's int8 GEMM);
// - kAmx: prepacked by dtb::int8_amx_pack_weight, a strided (plain) CPU int8 tensor of shape [N / 16, 16 K + 64]
//   (csrc/cpu/int8_amx_gemm.h: AMX tiles; K a multiple of 64).
enum class Int8WeightFormat { kOneDnn, kAmx };

// Bytes of an AMX-packed weight's row (one block of 16 output channels) past its K / 4 tile rows of 64 bytes: the
// block's 16 int32 zero-point corrections.
constexpr int64_t kAmxPackedCorrectionBytes = 64;
constexpr int64_t kAmxPackedDepth = 64;  // K is a multiple of this (one tile's depth, in int8 values)

// N, K and the layout of an int8 Linear's weight, checked to be one of the two (the message names both).
struct Int8WeightShape {
  Int8WeightFormat format;
  int64_t in_features;   // K
  int64_t out_features;  // N
};

inline Int8WeightShape int8_weight_shape(const at::Tensor& weight, const char* op) {
  const bool int8 = weight.scalar_type() == at::kChar && weight.dim() == 2;
  if (int8 && weight.is_mkldnn()) {
    return {Int8WeightFormat::kOneDnn, weight.size(0), weight.size(1)};
  }
  const bool amx = int8 && weight.layout() == at::kStrided && weight.device().is_cpu() && weight.is_contiguous() &&
                   weight.size(1) >= kAmxPackedCorrectionBytes + 16 * kAmxPackedDepth &&
                   (weight.size(1) - kAmxPackedCorrectionBytes) % (16 * kAmxPackedDepth) == 0;
  const bool strided_not_contiguous = weight.layout() == at::kStrided && !weight.is_contiguous();
  TORCH_CHECK(amx, op,
              ": weight must be an int8 weight prepacked either by onednn::qlinear_prepack (a MkldnnCPU int8 tensor "
              "[K, N]) or by dtb::int8_amx_pack_weight (a contiguous CPU int8 tensor [N / 16, 16 K + 64], K a "
              "multiple of 64), got a ", weight.scalar_type(), " tensor of layout ", weight.layout(), " on ",
              weight.device(), " and shape ", weight.sizes(), strided_not_contiguous ? " (not contiguous)" : "");
  return {Int8WeightFormat::kAmx, (weight.size(1) - kAmxPackedCorrectionBytes) / 16, 16 * weight.size(0)};
}

// The int8 Linear ops' own inputs: quantized [M, K] uint8 rows on the CPU, weight: an int8 weight prepacked by
// onednn::qlinear_prepack or dtb::int8_amx_pack_weight (int8_weight_shape), weight_scale [N] float32,
// weight_zero_points [N] int64. The epilogue's inputs are checked as the epilogue ops check them, against
// int8_linear_product_shape. Returns the weight's layout.
inline Int8WeightFormat check_int8_linear_inputs(const at::Tensor& quantized, const at::Tensor& weight,
                                                 const at::Tensor& weight_scale, const at::Tensor& weight_zero_points,
                                                 const char* op) {
  TORCH_CHECK(quantized.dim() == 2 && quantized.scalar_type() == at::kByte && quantized.device().is_cpu(), op,
              ": quantized must be [M, K] uint8 on the CPU, got ", quantized.scalar_type(), " of shape ",
              quantized.sizes(), " on ", quantized.device());
  const Int8WeightShape shape = int8_weight_shape(weight, op);
  TORCH_CHECK(shape.in_features == quantized.size(1), op, ": weight takes K = ", shape.in_features,
              " input features, quantized has ", quantized.size(1));
  const int64_t n = shape.out_features;
  TORCH_CHECK(weight_scale.dim() == 1 && weight_scale.size(0) == n && weight_scale.scalar_type() == at::kFloat &&
                  weight_scale.device().is_cpu(),
              op, ": weight_scale must be [N] = [", n, "] float32 on the CPU, got ", weight_scale.scalar_type(),
              " of shape ", weight_scale.sizes());
  TORCH_CHECK(weight_zero_points.dim() == 1 && weight_zero_points.size(0) == n &&
                  weight_zero_points.scalar_type() == at::kLong,
              op, ": weight_zero_points must be [N] = [", n, "] int64, got ", weight_zero_points.scalar_type(),
              " of shape ", weight_zero_points.sizes());
  return shape.format;
}

// dtb::int8_amx_pack_weight's input: an [N, K] int8 CPU tensor, N a multiple of 16 and K a positive multiple of 64.
inline void check_int8_amx_pack_weight_input(const at::Tensor& weight) {
  constexpr const char* op = "dtb::int8_amx_pack_weight";
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.layout() == at::kStrided &&
                  weight.device().is_cpu(),
              op, ": weight must be an [N, K] int8 CPU tensor, got a ", weight.scalar_type(), " tensor of layout ",
              weight.layout(), " on ", weight.device(), " with shape ", weight.sizes());
  TORCH_CHECK(weight.size(0) > 0 && weight.size(0) % 16 == 0 && weight.size(1) > 0 &&
                  weight.size(1) % kAmxPackedDepth == 0,
              op, ": weight [N, K] must have N a positive multiple of 16 and K a positive multiple of ",
              kAmxPackedDepth, " (the AMX tile's 16 columns and 64-deep products), got N = ", weight.size(0),
              " and K = ", weight.size(1));
}

// A [M, N] float32 view of one element on quantized's device: stands for an int8 Linear's product in the epilogue
// checks (check_dequantize_rows_inputs and the others), which read only its shape, dtype and device.
inline at::Tensor int8_linear_product_shape(const at::Tensor& quantized, const at::Tensor& weight_scale) {
  return at::empty({1, 1}, quantized.options().dtype(at::kFloat)).expand({quantized.size(0), weight_scale.size(0)});
}

}  // namespace dtb
