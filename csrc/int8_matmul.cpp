// See int8_matmul.h.
#include "int8_matmul.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string_view>

namespace dtb {
namespace {

constexpr int64_t kZeroPoint = 128;  // of the uint8 rows: dtb::quantize_rows stores int8 values + 128

// The C++ signature onednn::qlinear_pointwise's CPU kernel was registered with (the dispatcher checks it).
using QLinearPointwise = at::Tensor(at::Tensor, double, int64_t, at::Tensor, at::Tensor, at::Tensor,
                                    std::optional<at::Tensor>, double, int64_t, std::optional<c10::ScalarType>,
                                    std::string_view, c10::List<std::optional<at::Scalar>>, std::string_view);

}  // namespace

at::Tensor int8_matmul(const at::Tensor& quantized, const at::Tensor& weight, const at::Tensor& weight_scale,
                       const at::Tensor& weight_zero_points) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("onednn::qlinear_pointwise", "")
                             .typed<QLinearPointwise>();
  // x_scale 1 and zero point 128: the int32 sums of (quantized - 128) * weight, times the weight scales, in float32.
  return op.call(quantized, 1.0, kZeroPoint, weight, weight_scale, weight_zero_points, std::nullopt, 1.0, 0,
                 at::kFloat, "none", c10::List<std::optional<at::Scalar>>(), "");
}

}  // namespace dtb
