// AMX tile machinery shared by the kernels that run products on AMX tiles: the bf16 attention (attention.cpp,
// TDPBF16PS) and the int8 Linear GEMM (int8_amx_gemm.cpp, TDPBUSD). AVX512 copy of the kernels only: the other
// copies never include it (see ../cpu_capability.h for how the copies are built and chosen).
//
// Before any tile instruction the process must hold Linux's permission for the tile registers and the CPU must have
// the AMX feature in question: ../cpu_capability.h cpu_amx_attention() / cpu_amx_int8() check both (the permission,
// arch_prctl ARCH_REQ_XCOMP_PERM, is requested once per process by cpu_amx_tiles_permitted()). Each thread then
// loads a tile configuration (TileScope) around its tile code.
#pragma once

#if !defined(CPU_CAPABILITY_AVX512)
#error "amx.h is for the AVX512 copy of the kernels only"
#endif

#include <immintrin.h>

#include <cstdint>

namespace dtb::CPU_CAPABILITY::amx {

// Target attributes of the functions that run tile instructions; the rest of the kernel file stays plain AVX512.
#define DTB_AMX_TILE_TARGET __attribute__((target("amx-tile")))
#define DTB_AMX_BF16_TARGET __attribute__((target("amx-tile,amx-bf16,avx512bf16")))
#define DTB_AMX_INT8_TARGET __attribute__((target("amx-tile,amx-int8")))

constexpr int kTileRows = 16;      // rows of every tile in the shared configuration
constexpr int64_t kTileBytes = 64;  // bytes of one tile row: 32 bf16, 64 int8 or 16 float32 / int32
constexpr int kTiles = 8;          // tile registers 0-7, all configured as 16 rows x 64 bytes

// The one configuration of both users: palette 1, every tile register 16 rows of 64 bytes (each kernel says which
// registers it uses for what). Row tails are handled by the kernels (padded rows), never by another configuration.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int tile = 0; tile < kTiles; ++tile) {
      bytes_per_row[tile] = kTileBytes;
      rows[tile] = kTileRows;
    }
  }
};

// Per thread: the tile configuration is loaded for one parallel_for chunk and released after it (oneDNN, which may
// run on the same thread in between, loads its own configuration for each of its kernels).
struct TileScope {
  DTB_AMX_TILE_TARGET TileScope() {
    static const TileConfig config;
    _tile_loadconfig(&config);
  }
  DTB_AMX_TILE_TARGET ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

}  // namespace dtb::CPU_CAPABILITY::amx
