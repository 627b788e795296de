// CPU kernel of dtb::restore: a new [B, L0, D] tensor equal to `base` except at `positions`, which take the rows
// of `src`. Each output row is written exactly once (from src or from base) instead of copying base and then
// overwriting.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../cpu_kernels.h"
#include "../op_checks.h"

// Compiled once per instruction set, into dtb::DEFAULT, dtb::AVX2 and dtb::AVX512 (see ../cpu_capability.h).
namespace dtb::CPU_CAPABILITY {
namespace {

// Bytes of row copies per parallel task: below this a copy stays on the calling thread, since waking the
// other threads costs more than the copy.
constexpr int64_t kParallelBytes = int64_t{1} << 18;

}  // namespace

at::Tensor restore_cpu(const at::Tensor& base_in, const at::Tensor& src_in, const at::Tensor& positions_in) {
  check_restore_inputs(base_in, src_in, positions_in);
  const at::Tensor base = base_in.contiguous();
  // The reference writes src converted to base's dtype; converting first lets the rows be copied as bytes.
  const at::Tensor src = src_in.to(base.scalar_type()).contiguous();
  const at::Tensor positions = positions_in.contiguous();
  const int64_t batch = base.size(0);
  const int64_t length = base.size(1);
  const int64_t slots = src.size(1);
  at::Tensor out = at::empty_like(base, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) {
    return out;
  }

  // source_slot[b, p]: the slot k with positions[b, k] == p, or -1 to keep base's row.
  at::Tensor source_slot = at::full({batch, length}, -1, positions.options());
  int64_t* slot_data = source_slot.mutable_data_ptr<int64_t>();
  const int64_t* position_data = positions.const_data_ptr<int64_t>();
  // Grains of about at::internal::GRAIN_SIZE elements, as ATen's own kernels use: small inputs stay on the
  // calling thread, where waking the others would cost more than the work.
  at::parallel_for(0, batch, std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, slots)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t k = 0; k < slots; ++k) {
        const int64_t position = position_data[b * slots + k];
        if (position < 0) {
          continue;
        }
        int64_t& slot = slot_data[b * length + position];
        TORCH_CHECK(slot < 0, "dtb::restore: positions must be distinct within an example; example ", b,
                    " has position ", position, " at slots ", slot, " and ", k);
        slot = k;
      }
    }
  });

  const int64_t row_bytes = base.size(2) * static_cast<int64_t>(base.element_size());
  const char* base_data = static_cast<const char*>(base.const_data_ptr());
  const char* src_data = static_cast<const char*>(src.const_data_ptr());
  char* out_data = static_cast<char*>(out.mutable_data_ptr());
  const int64_t grain = std::max<int64_t>(1, kParallelBytes / std::max<int64_t>(1, row_bytes));
  at::parallel_for(0, batch * length, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t slot = slot_data[row];
      const char* source =
          slot < 0 ? base_data + row * row_bytes : src_data + ((row / length) * slots + slot) * row_bytes;
      std::memcpy(out_data + row * row_bytes, source, row_bytes);
    }
  });
  return out;
}

}  // namespace dtb::CPU_CAPABILITY
