// The fused AVX2 task program of one tile (method_kernels.h, task_tile): per 8
// elements, every model's delta is loaded, sparsified, rescaled and weighted in
// registers and mixed at once, instead of staging each step through memory.
// Bit-identical to task_tile_composed: each lane gets the same operations in the same
// order, the rank cursors advance in index order per model, and the last partial
// vector runs on zero-padded copies of the inputs (its extra lanes are discarded).
#include <cstring>

#include "avx2_lanes.h"

namespace ladle {
namespace {

using avx2::load8;

// A model's vector constants for one tile.
struct ModelLanes {
  __m256i test;             // kRandom: its keep test (dare_test4)
  avx2::BoundLanes lo, hi;  // kRank: its cursors' tests
};

// The weighted delta of model `m` for elements i..i+7 of the tile (`at`: those
// elements of its source; `b`: the base's lanes; tile_elem: the tile's first element),
// sparsified as S says.
template <TileSparsify S>
inline __m256 model_lanes(uint64_t tile_elem, TileModel& m, const ModelLanes& lanes,
                          const void* at, size_t i, __m256 b) {
  __m256 d = _mm256_sub_ps(load8(m.dtype, at, 0), b);
  if constexpr (S == TileSparsify::kRank) {
    __m256i bits = avx2::abs_bits8(d);
    __m256i below_lo = avx2::below8(&m.lo, lanes.lo, bits);
    __m256i below_hi = avx2::below8(&m.hi, lanes.hi, bits);
    d = _mm256_and_ps(_mm256_castsi256_ps(_mm256_andnot_si256(below_lo, below_hi)), d);
  } else if constexpr (S == TileSparsify::kRandom) {
    __m256 kept = avx2::dare_kept8(avx2::dare_even_counters(m.stream, tile_elem + i), lanes.test);
    __m256 dens = _mm256_set1_ps(m.density);
    if (m.by_density) d = _mm256_div_ps(d, dens);
    d = _mm256_and_ps(kept, d);
  } else if constexpr (S == TileSparsify::kKept) {
    __m256 kept = avx2::kept_lanes8(static_cast<int>((m.keep[i / 64] >> (i % 64)) & 0xFF));
    if (m.by_density) d = _mm256_div_ps(d, _mm256_set1_ps(m.density));
    d = _mm256_and_ps(kept, d);
  }
  if (m.scaled) d = _mm256_mul_ps(d, _mm256_set1_ps(m.scale));
  if (m.weight != 1.0f) d = _mm256_mul_ps(d, _mm256_set1_ps(m.weight));
  return d;
}

// The tile of N models sparsified as S: a compile-time N (up to 4) unrolls the model
// loop so the lanes stay in registers, and S drops the per-vector switch; larger N
// use n_models at run time.
template <size_t N, TileSparsify S>
void task_tile_n(TaskTile& tile, size_t n_models, const float* base, float* out, size_t n) {
  const size_t count = N <= 4 ? N : n_models;
  // Local copies of the models and the mix (copy_tile_models); the rank cursors go
  // back at the end.
  TileModel models[N];
  size_t item[N];  // bytes per element of each model's source
  copy_tile_models(tile, count, models, item);
  const MixSpec mix = tile.mix;
  const uint64_t elem = tile.elem;
  __m256 v[N];
  ModelLanes lanes[N];
  for (size_t k = 0; k < count; ++k) {
    if constexpr (S == TileSparsify::kRandom) lanes[k].test = avx2::dare_test4(models[k].density);
    if constexpr (S == TileSparsify::kRank) {
      lanes[k].lo = avx2::bound_lanes(models[k].lo);
      lanes[k].hi = avx2::bound_lanes(models[k].hi);
    }
  }
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 b = _mm256_loadu_ps(base + i);
#pragma GCC unroll 4
    for (size_t k = 0; k < count; ++k) {
      TileModel& m = models[k];
      v[k] = model_lanes<S>(elem, m, lanes[k], static_cast<const uint8_t*>(m.src) + i * item[k],
                            i, b);
    }
    _mm256_storeu_ps(out + i, avx2::mix8(mix, v, count, b));
  }
  if (i < n) {
    // The last partial vector: lanes past n read zeros and are not stored. They come
    // after the real lanes, so the rank cursors count the real ties first; and the
    // DARE counters and keep bits are indexed by i as before.
    size_t rest = n - i;
    alignas(32) float b_pad[8] = {0};
    std::memcpy(b_pad, base + i, rest * sizeof(float));
    __m256 b = _mm256_load_ps(b_pad);
    alignas(32) uint8_t src_pad[8 * sizeof(float)];
    for (size_t k = 0; k < count; ++k) {
      TileModel& m = models[k];
      std::memset(src_pad, 0, sizeof(src_pad));
      std::memcpy(src_pad, static_cast<const uint8_t*>(m.src) + i * item[k], rest * item[k]);
      v[k] = model_lanes<S>(elem, m, lanes[k], src_pad, i, b);
    }
    alignas(32) float last[8];
    _mm256_store_ps(last, avx2::mix8(mix, v, count, b));
    std::memcpy(out + i, last, rest * sizeof(float));
  }
  if constexpr (S == TileSparsify::kRank) return_rank_cursors(tile, models, count);
}

}  // namespace

void task_tile_avx2(TaskTile& tile, const float* base, float* out, size_t n) {
  bool fits = tile.n_models <= avx2::kFusedModels;
  for (size_t k = 0; k < tile.n_models && fits; ++k) fits = avx2::loads8(tile.models[k].dtype);
  if (!fits) return task_tile_composed(*avx2_method_kernels(), tile, base, out, n);
  with_tile_constants<avx2::kFusedModels>(tile, [&](auto count, auto kind) {
    task_tile_n<decltype(count)::value, decltype(kind)::value>(tile, tile.n_models, base, out, n);
  });
}

}  // namespace ladle
