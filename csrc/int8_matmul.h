// oneDNN's int8 GEMM for the int8 Linear kernels (csrc/cpu/int8_rows.cpp), as PyTorch runs it.
//
// PyTorch links oneDNN without exporting its symbols, so the GEMM is reached through the dispatcher
// (onednn::qlinear_pointwise, the op dtb_ext/precision/int8.py called from Python before). Compiled for the baseline
// instruction set with the glue: the dispatcher's call templates it instantiates must not be AVX code
// (csrc/cpu_kernels.h says why).
#pragma once

#include <ATen/ATen.h>

namespace dtb {

// quantized [M, K] uint8 (int8 value + 128) rows, weight: an [N, K] int8 weight prepacked by
// onednn::qlinear_prepack (a MkldnnCPU tensor of shape [K, N]), weight_scale [N] float32, weight_zero_points [N]
// int64 (zeros) -> [M, N] float32: the exact int32 sums of (quantized - 128) * weight times the weight scales.
// Inside a parallel region oneDNN runs it on the calling thread alone.
at::Tensor int8_matmul(const at::Tensor& quantized, const at::Tensor& weight, const at::Tensor& weight_scale,
                       const at::Tensor& weight_zero_points);

}  // namespace dtb
