// CUDA kernels of the merge methods (see method_kernels_cuda.h). One block per tile
// of kMethodTileElems elements; lane l owns the kLaneElems consecutive elements
// [l * 8, l * 8 + 8) of its tile, so a lane's elements come in index order and the
// lanes of a block in index order too. That is what keeps the rank window exact in
// parallel: the elements equal to the threshold before a lane's first one are the
// tile's tie prefix (from the tie pass) plus the counts of the lanes before it (a
// block scan). fp64 per-tile sums (L1, Gram) are chains in index order exactly as the
// CPU writes them, one thread per chain (chain_kernel: tile-major (tile, model) or
// (tile, pair) numbering, so every SM has chains to run). SCE runs the same way, its
// one selection ranking the variance of the models' deltas (method_sce_elems.h, the
// CPU's own per-element code). All per-thread code is __host__ __device__ so
// emulate_method() runs it on the CPU with the same barriers between phases.
#include <cuda_runtime.h>

#include <vector>

#include "cuda_elems.cuh"
#include "method_kernels.h"
#include "method_della_elems.h"
#include "method_kernels_cuda.h"
#include "method_sce_elems.h"

namespace ladle {
namespace cuda {
namespace {

using namespace elems;  // NOLINT: the shared per-element code

constexpr uint64_t kTile = kMethodTileElems;
static_assert(kTile == static_cast<uint64_t>(kMethodThreads) * kLaneElems,
              "a block's lanes cover one tile");

LADLE_HD uint32_t abs_bits_of(float x) { return to_bits(x) & 0x7FFFFFFFu; }

LADLE_HD void add_count(unsigned long long* p, unsigned long long n) {
#ifdef __CUDA_ARCH__
  atomicAdd(p, n);
#else
  *p += n;
#endif
}

LADLE_HD void count_one(unsigned long long* p) { add_count(p, 1ull); }

// DARE's draw (method_kernels.h: mix64, dare_draw), integer arithmetic only.
LADLE_HD uint64_t mix64_hd(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

LADLE_HD uint32_t dare_draw_hd(uint64_t stream, uint64_t elem) {
  return static_cast<uint32_t>(mix64_hd(stream + (elem + 1) * kGolden) >> 40);
}

// Chunk element e of model k (or of the base) as fp32, and the delta from the base.
LADLE_HD float base_at(const MethodLaunch& L, uint64_t e) {
  return load_one(L.base_dtype, L.base, e);
}

LADLE_HD float delta_at(const MethodLaunch& L, uint32_t k, uint64_t e, float base) {
  const ModelDesc& m = L.models[k];
  return sub_rn(load_one(m.dtype, m.ptr, e), base);
}

// The lane's elements [first, last) of the chunk.
struct LaneRange {
  uint64_t first, last;
};

LADLE_HD LaneRange lane_range(const MethodLaunch& L, uint64_t tile, uint32_t lane) {
  uint64_t first = tile * kTile + static_cast<uint64_t>(lane) * kLaneElems;
  uint64_t last = first + kLaneElems;
  if (first > L.n_elems) first = L.n_elems;
  if (last > L.n_elems) last = L.n_elems;
  return {first, last};
}

// "rank < r" of one element, the cursor `seen` counting ties met so far.
LADLE_HD bool below(const SelDesc& s, uint32_t bits, uint64_t* seen) {
  if (s.all) return true;
  if (s.none) return false;
  if (bits != s.threshold) return bits > s.threshold;
  return (*seen)++ < s.ties_keep;
}

// Sparsifies one delta of model k at chunk element e (kept, scaled by 1/density when
// `by_density`, or +0), advancing the model's rank cursors.
LADLE_HD float sparsify(const MethodLaunch& L, uint32_t k, uint64_t e, float d, bool by_density,
                        uint64_t* seen_lo, uint64_t* seen_hi) {
  const ModelDesc& m = L.models[k];
  if (L.sparsify == kRandomDraw) {
    bool keep = mul_rn(static_cast<float>(dare_draw_hd(m.stream, L.first_elem + e)),
                       0x1p-24f) < m.density;
    return keep ? (by_density ? div_rn(d, m.density) : d) : 0.0f;
  }
  if (L.sparsify == kProbDraw) {  // DELLA: p by rank (selecting models) or 1 / 0
    float p = m.selects ? L.probs[static_cast<uint64_t>(k) * L.n_elems + e] : m.density;
    bool keep = mul_rn(static_cast<float>(dare_draw_hd(m.stream, L.first_elem + e)),
                       0x1p-24f) < p;
    return keep ? (by_density ? div_rn(d, p) : d) : 0.0f;
  }
  if (L.sparsify == kRankWindow) {
    uint32_t bits = abs_bits_of(d);
    bool below_lo = below(m.sel[0], bits, seen_lo);
    bool below_hi = below(m.sel[1], bits, seen_hi);
    return (!below_lo && below_hi) ? d : 0.0f;
  }
  return d;
}

LADLE_HD int sign_of(float x) { return (x > 0.0f) - (x < 0.0f); }

// mix_scalar (method_kernels_cpu.cc) for one element.
LADLE_HD float mix(const MethodLaunch& L, const float* wd) {
  float sum = 0.0f, divisor = L.plain_divisor;
  if (L.consensus == static_cast<uint32_t>(MixConsensus::kNone)) {
    for (uint32_t k = 0; k < L.n_models; ++k) sum = add_rn(sum, wd[k]);
  } else {
    int majority;
    if (L.consensus == static_cast<uint32_t>(MixConsensus::kSum)) {
      float total = 0.0f;
      for (uint32_t k = 0; k < L.n_models; ++k) total = add_rn(total, wd[k]);
      majority = total >= 0.0f ? 1 : -1;
    } else {
      int count = 0;
      for (uint32_t k = 0; k < L.n_models; ++k) count += sign_of(wd[k]);
      majority = count >= 0 ? 1 : -1;
    }
    float weight = 0.0f;
    for (uint32_t k = 0; k < L.n_models; ++k) {
      if (sign_of(wd[k]) != majority) continue;
      sum = add_rn(sum, wd[k]);
      weight = add_rn(weight, L.models[k].weight);
    }
    divisor = weight == 0.0f ? 1.0f : weight;
  }
  if (L.normalize) sum = div_rn(sum, divisor);
  if (L.lambda != 1.0f) sum = mul_rn(sum, L.lambda);
  return sum;
}

// ---- the passes without block-level cooperation ----

// ---- SCE's per-element values ----

// The deltas of chunk element e (tv[k]), its base value and the rank bits of the
// deltas' variance.
LADLE_HD uint32_t sce_bits_at(const MethodLaunch& L, uint64_t e, float* tv, float* base) {
  *base = base_at(L, e);
  for (uint32_t k = 0; k < L.n_models; ++k) tv[k] = delta_at(L, k, e, *base);
  return sce_variance_bits(L.n_models, [tv](uint32_t k) { return tv[k]; });
}

LADLE_HD uint64_t sce_tie_prefix(const MethodLaunch& L, uint64_t tile) {
  return L.select.need_ties ? L.tie_prefix[tile] : 0;
}

// ---- the first histogram pass: per selecting model (task) or one (kSce) ----
// (templates, so the task's kernels carry none of SCE's per-thread arrays)

template <bool kSce>
LADLE_HD uint32_t n_hi_hists(const MethodLaunch& L) { return kSce ? 1 : L.n_models; }

template <bool kSce>
LADLE_HD bool counts_hi(const MethodLaunch& L, uint32_t h) { return kSce || L.models[h].selects; }

// The bits histogram h ranks at chunk element e: model h's |delta|, or SCE's variance.
template <bool kSce>
LADLE_HD uint32_t hi_bits_at(const MethodLaunch& L, uint32_t h, uint64_t e) {
  if constexpr (kSce) {
    float tv[kMaxTaskModels], b;
    return sce_bits_at(L, e, tv, &b);
  } else {
    return abs_bits_of(delta_at(L, h, e, base_at(L, e)));
  }
}

// The emulator's histogram pass (the GPU's is hist_hi_kernel: the same bins, counted
// in shared memory first; integer counts, so the two agree exactly). SCE also counts
// its nonzero variances, after its one histogram.
template <bool kSce>
LADLE_HD void hist_hi_lane(const MethodLaunch& L, uint64_t tile, uint32_t lane) {
  LaneRange r = lane_range(L, tile, lane);
  unsigned long long nonzero = 0;
  for (uint64_t e = r.first; e < r.last; ++e)
    for (uint32_t h = 0; h < n_hi_hists<kSce>(L); ++h) {
      if (!counts_hi<kSce>(L, h)) continue;
      uint32_t bits = hi_bits_at<kSce>(L, h, e);
      count_one(L.counts + static_cast<uint64_t>(h) * kHiHistBins + (bits >> 16));
      if constexpr (kSce) nonzero += bits != 0;
    }
  if (nonzero) add_count(L.counts + kHiHistBins, nonzero);
}

LADLE_HD void hist_lo_lane(const MethodLaunch& L, uint64_t tile, uint32_t lane) {
  LaneRange r = lane_range(L, tile, lane);
  for (uint64_t e = r.first; e < r.last; ++e) {
    float b = base_at(L, e);
    for (uint32_t k = 0; k < L.n_models; ++k) {
      const ModelDesc& m = L.models[k];
      if (!m.sel[0].active && !m.sel[1].active) continue;
      uint32_t bits = abs_bits_of(delta_at(L, k, e, b));
      for (uint32_t s = 0; s < 2; ++s) {
        if (!m.sel[s].active || (bits >> 16) != m.sel[s].hi_bin) continue;
        count_one(L.counts + (2ull * k + s) * kLoHistBins + (bits & 0xFFFFu));
      }
    }
  }
}

// Each lane counts its own elements, then adds its count once per (model, bound):
// one atomic per lane, not per element, on the tile's counter.
LADLE_HD void ties_lane(const MethodLaunch& L, uint64_t tile, uint32_t lane) {
  LaneRange r = lane_range(L, tile, lane);
  for (uint32_t k = 0; k < L.n_models; ++k) {
    const ModelDesc& m = L.models[k];
    if (!m.sel[0].need_ties && !m.sel[1].need_ties) continue;
    unsigned long long c[2] = {0, 0};
    for (uint64_t e = r.first; e < r.last; ++e) {
      uint32_t bits = abs_bits_of(delta_at(L, k, e, base_at(L, e)));
      for (uint32_t s = 0; s < 2; ++s) c[s] += m.sel[s].need_ties && bits == m.sel[s].threshold;
    }
    for (uint32_t s = 0; s < 2; ++s)
      if (c[s]) add_count(L.counts + (2ull * k + s) * L.n_tiles + tile, c[s]);
  }
}

LADLE_HD uint64_t tie_prefix_at(const MethodLaunch& L, uint32_t k, uint32_t s, uint64_t tile) {
  return L.models[k].sel[s].need_ties ? L.tie_prefix[(2ull * k + s) * L.n_tiles + tile] : 0;
}

// Chain k of a tile (of L.chain_elems elements when set: DELLA's units): model k's L1
// before and after sparsifying (no rescaling) in index order, walking the rank cursors
// itself.
LADLE_HD void l1_chain(const MethodLaunch& L, uint64_t tile, uint32_t k) {
  uint64_t len = L.chain_elems ? L.chain_elems : kTile;
  uint64_t first = tile * len, last = first + len < L.n_elems ? first + len : L.n_elems;
  uint64_t seen_lo = tie_prefix_at(L, k, 0, tile), seen_hi = tie_prefix_at(L, k, 1, tile);
  double before = 0.0, after = 0.0;
  for (uint64_t e = first; e < last; ++e) {
    float d = delta_at(L, k, e, base_at(L, e));
    before = dadd_rn(before, fabs(static_cast<double>(d)));
    float kept = sparsify(L, k, e, d, false, &seen_lo, &seen_hi);
    after = dadd_rn(after, fabs(static_cast<double>(kept)));
  }
  L.sums[(2ull * k) * L.n_tiles + tile] = before;
  L.sums[(2ull * k + 1) * L.n_tiles + tile] = after;
}

// Gram vector a at chunk element e: input a, minus the base when there is one.
LADLE_HD float gram_vector(const MethodLaunch& L, uint32_t a, uint64_t e) {
  float x = load_one(L.models[a].dtype, L.models[a].ptr, e);
  return L.base ? sub_rn(x, base_at(L, e)) : x;
}

// Chain p of a tile: pair p = (a, b), a <= b (row-major upper triangle), summed in
// index order.
LADLE_HD void gram_chain(const MethodLaunch& L, uint64_t tile, uint32_t pair) {
  uint64_t first = tile * kTile, last = first + kTile < L.n_elems ? first + kTile : L.n_elems;
  uint32_t a = 0, b = pair, row = L.n_models;  // row a of the triangle holds m - a pairs
  while (b >= row) {
    b -= row;
    ++a;
    --row;
  }
  b += a;
  double sum = 0.0;
  for (uint64_t e = first; e < last; ++e)
    sum = dadd_rn(sum, dmul_rn(static_cast<double>(gram_vector(L, a, e)),
                               static_cast<double>(gram_vector(L, b, e))));
  L.sums[static_cast<uint64_t>(pair) * L.n_tiles + tile] = sum;
}

LADLE_HD void sce_hist_lo_lane(const MethodLaunch& L, uint64_t tile, uint32_t lane) {
  LaneRange r = lane_range(L, tile, lane);
  float tv[kMaxTaskModels], b;
  for (uint64_t e = r.first; e < r.last; ++e) {
    uint32_t bits = sce_bits_at(L, e, tv, &b);
    if ((bits >> 16) == L.select.hi_bin) count_one(L.counts + (bits & 0xFFFFu));
  }
}

// The lane's elements whose variance bits equal the threshold.
LADLE_HD uint32_t sce_lane_ties(const MethodLaunch& L, uint64_t tile, uint32_t lane) {
  LaneRange r = lane_range(L, tile, lane);
  float tv[kMaxTaskModels], b;
  uint32_t c = 0;
  for (uint64_t e = r.first; e < r.last; ++e) c += sce_bits_at(L, e, tv, &b) == L.select.threshold;
  return c;
}

LADLE_HD void sce_ties_lane(const MethodLaunch& L, uint64_t tile, uint32_t lane) {
  uint32_t c = sce_lane_ties(L, tile, lane);
  if (c) add_count(L.counts + tile, c);
}

// Chain k of a tile: the sum of squares of model k's kept deltas in index order,
// walking the selection's cursor itself.
LADLE_HD void sce_squares_chain(const MethodLaunch& L, uint64_t tile, uint32_t k) {
  uint64_t first = tile * kTile, last = first + kTile < L.n_elems ? first + kTile : L.n_elems;
  uint64_t seen = sce_tie_prefix(L, tile);
  float tv[kMaxTaskModels], b;
  double sum = 0.0;
  for (uint64_t e = first; e < last; ++e) {
    bool keep = below(L.select, sce_bits_at(L, e, tv, &b), &seen);
    double v = static_cast<double>(keep ? tv[k] : 0.0f);
    sum = dadd_rn(sum, dmul_rn(v, v));
  }
  L.sums[static_cast<uint64_t>(k) * L.n_tiles + tile] = sum;
}

// The fp64 chains of the L1, Gram and SCE squares passes: one per (tile, model) or
// (tile, pair), numbered tile-major, one per thread.
// Element e of model a widened to fp64 as the CPU's dot products read it (load_f64 in
// reduce.cc): F64 values whole, the other float types through fp32, both exact.
LADLE_HD double dot_value(const MethodLaunch& L, uint32_t a, uint64_t e) {
  if (L.models[a].dtype == kF64) return static_cast<const double*>(L.models[a].ptr)[e];
  return static_cast<double>(load_one(L.models[a].dtype, L.models[a].ptr, e));
}

// Chain k of a tile: g · x_k over the tile in index order, from +0.
LADLE_HD void dot_chain(const MethodLaunch& L, uint64_t tile, uint32_t k) {
  uint64_t first = tile * kTile, last = first + kTile < L.n_elems ? first + kTile : L.n_elems;
  double sum = 0.0;
  for (uint64_t e = first; e < last; ++e)
    sum = dadd_rn(sum, dmul_rn(dot_value(L, 0, e), dot_value(L, k + 1, e)));
  L.sums[static_cast<uint64_t>(k) * L.n_tiles + tile] = sum;
}

LADLE_HD uint32_t chains_per_tile(const MethodLaunch& L) {
  if (L.pass == kPassDot) return L.n_models - 1;
  return L.pass == kPassL1 || L.pass == kPassSceSquares ? L.n_models
                                                        : L.n_models * (L.n_models + 1) / 2;
}

template <bool kSce>
LADLE_HD void run_chain(const MethodLaunch& L, uint64_t chain) {
  uint32_t per_tile = chains_per_tile(L);
  if (per_tile == 0 || chain >= L.n_tiles * per_tile) return;
  uint64_t tile = chain / per_tile;
  uint32_t c = static_cast<uint32_t>(chain % per_tile);
  if constexpr (kSce) sce_squares_chain(L, tile, c);
  else if (L.pass == kPassL1) l1_chain(L, tile, c);
  else if (L.pass == kPassDot) dot_chain(L, tile, c);
  else gram_chain(L, tile, c);
}

LADLE_HD void simple_pass_lane(const MethodLaunch& L, uint64_t tile, uint32_t lane) {
  switch (L.pass) {
    case kPassHistHi: return hist_hi_lane<false>(L, tile, lane);
    case kPassHistLo: return hist_lo_lane(L, tile, lane);
    case kPassTies: return ties_lane(L, tile, lane);
    default: return;
  }
}

LADLE_HD bool is_sce_pass(const MethodLaunch& L) {
  return L.pass >= kPassSceHistHi && L.pass <= kPassSceApply;
}

LADLE_HD void sce_pass_lane(const MethodLaunch& L, uint64_t tile, uint32_t lane) {
  switch (L.pass) {
    case kPassSceHistHi: return hist_hi_lane<true>(L, tile, lane);
    case kPassSceHistLo: return sce_hist_lo_lane(L, tile, lane);
    case kPassSceTies: return sce_ties_lane(L, tile, lane);
    default: return;
  }
}

// ---- DELLA: keep probabilities by rank inside each rank group ----
//
// Group g of the chunk (its blocks' groups in order) holds group_len elements
// group_stride apart. A block per (group, model) sorts the keys (|δ| bits, index) of
// a group of up to kSortElems in shared memory (bitonic, padded to a power of two);
// longer groups rank each element by counting the keys below it. Either way rank r is
// the ascending rank with ties by index, as the CPU's stable radix sort gives it.

constexpr uint32_t kSortElems = 16384;  // 128 KiB of 8-byte keys
constexpr int kSortThreads = kMethodThreads;

LADLE_HD uint64_t group_elem(const MethodLaunch& L, uint64_t g, uint64_t j) {
  uint64_t block = L.group_len * L.group_stride;
  return g / L.group_stride * block + g % L.group_stride + j * L.group_stride;
}

LADLE_HD uint64_t n_rank_groups(const MethodLaunch& L) { return L.n_elems / L.group_len; }

LADLE_HD uint64_t rank_key(const MethodLaunch& L, uint32_t k, uint64_t g, uint64_t j) {
  uint64_t e = group_elem(L, g, j);
  return static_cast<uint64_t>(abs_bits_of(delta_at(L, k, e, base_at(L, e)))) << 32 | j;
}

LADLE_HD void store_prob(const MethodLaunch& L, uint32_t k, uint64_t g, uint64_t rank,
                         uint64_t j) {
  const ModelDesc& m = L.models[k];
  L.probs[static_cast<uint64_t>(k) * L.n_elems + group_elem(L, g, j)] =
      della_keep_probability(rank, L.group_len, m.floor, m.epsilon);
}

LADLE_HD uint32_t sort_len(const MethodLaunch& L) {
  uint32_t n = 1;
  while (n < L.group_len) n <<= 1;
  return n;
}

LADLE_HD void sort_load(const MethodLaunch& L, uint32_t k, uint64_t g, uint32_t lane,
                        uint64_t* keys) {
  for (uint32_t t = lane; t < sort_len(L); t += kSortThreads)
    keys[t] = t < L.group_len ? rank_key(L, k, g, t) : ~0ull;
}

// One step (size, stride) of the bitonic network: the lane's compare-exchanges.
LADLE_HD void sort_step(uint64_t* keys, uint32_t n, uint32_t size, uint32_t stride,
                        uint32_t lane) {
  for (uint32_t t = lane; t < n / 2; t += kSortThreads) {
    uint32_t i = t / stride * 2 * stride + t % stride, p = i + stride;
    bool ascending = (i & size) == 0;
    if ((keys[i] > keys[p]) == ascending) {
      uint64_t x = keys[i];
      keys[i] = keys[p];
      keys[p] = x;
    }
  }
}

LADLE_HD void sort_store(const MethodLaunch& L, uint32_t k, uint64_t g, uint32_t lane,
                         const uint64_t* keys) {
  for (uint64_t r = lane; r < L.group_len; r += kSortThreads)
    store_prob(L, k, g, r, keys[r] & 0xFFFFFFFFu);
}

LADLE_HD void rank_by_count(const MethodLaunch& L, uint32_t k, uint64_t g, uint32_t lane) {
  for (uint64_t j = lane; j < L.group_len; j += kSortThreads) {
    uint64_t key = rank_key(L, k, g, j), rank = 0;
    for (uint64_t i = 0; i < L.group_len; ++i) rank += rank_key(L, k, g, i) < key;
    store_prob(L, k, g, rank, j);
  }
}

// ---- the apply pass: a tie scan per model, then the per-element program ----

// A lane's rank cursors at its first element, per model and bound.
struct LaneCursors {
  uint64_t seen[kMaxTaskModels][2];
};

LADLE_HD bool needs_scan(const MethodLaunch& L, uint32_t k) {
  return L.sparsify == kRankWindow && (L.models[k].sel[0].need_ties || L.models[k].sel[1].need_ties);
}

// Phase 1: elements of the lane equal to model k's thresholds.
LADLE_HD void count_lane_ties(const MethodLaunch& L, uint64_t tile, uint32_t lane, uint32_t k,
                              uint32_t counts[2][kMethodThreads]) {
  const ModelDesc& m = L.models[k];
  LaneRange r = lane_range(L, tile, lane);
  uint32_t c[2] = {0, 0};
  for (uint64_t e = r.first; e < r.last; ++e) {
    uint32_t bits = abs_bits_of(delta_at(L, k, e, base_at(L, e)));
    for (uint32_t s = 0; s < 2; ++s) c[s] += m.sel[s].need_ties && bits == m.sel[s].threshold;
  }
  counts[0][lane] = c[0];
  counts[1][lane] = c[1];
}

// Phase 2 (one lane): exclusive prefix sums over the lanes.
LADLE_HD void scan_counts(uint32_t counts[2][kMethodThreads]) {
  for (uint32_t s = 0; s < 2; ++s) {
    uint32_t before = 0;
    for (int l = 0; l < kMethodThreads; ++l) {
      uint32_t here = counts[s][l];
      counts[s][l] = before;
      before += here;
    }
  }
}

// Phase 3: the lane's cursors for model k.
LADLE_HD void take_cursors(const MethodLaunch& L, uint64_t tile, uint32_t lane, uint32_t k,
                           uint32_t counts[2][kMethodThreads], LaneCursors* c) {
  for (uint32_t s = 0; s < 2; ++s) c->seen[k][s] = tie_prefix_at(L, k, s, tile) + counts[s][lane];
}

LADLE_HD void apply_lane(const MethodLaunch& L, uint64_t tile, uint32_t lane, LaneCursors* c) {
  LaneRange r = lane_range(L, tile, lane);
  bool by_density = L.by_density != 0;
  for (uint64_t e = r.first; e < r.last; ++e) {
    float b = base_at(L, e);
    float wd[kMaxTaskModels];
    for (uint32_t k = 0; k < L.n_models; ++k) {
      const ModelDesc& m = L.models[k];
      float d = sparsify(L, k, e, delta_at(L, k, e, b), by_density, &c->seen[k][0],
                         &c->seen[k][1]);
      if (m.l1_scaled) d = mul_rn(d, m.l1_scale);
      wd[k] = mul_rn(d, m.weight);
    }
    store_one(L.out_dtype, L.out, e, add_rn(b, mix(L, wd)));
  }
}

LADLE_HD void zero_cursors(const MethodLaunch& L, LaneCursors* c) {
  for (uint32_t k = 0; k < L.n_models; ++k) c->seen[k][0] = c->seen[k][1] = 0;
}

// SCE's apply pass has one cursor per lane (one selection for every model): phase 1
// counts the lane's ties (counts[0]), the scan is scan_counts', and the cursor is the
// tile's prefix plus the lanes' before it.
LADLE_HD void sce_count_lane_ties(const MethodLaunch& L, uint64_t tile, uint32_t lane,
                                  uint32_t counts[2][kMethodThreads]) {
  counts[0][lane] = sce_lane_ties(L, tile, lane);
  counts[1][lane] = 0;
}

LADLE_HD uint64_t sce_cursor(const MethodLaunch& L, uint64_t tile, uint32_t lane,
                             uint32_t counts[2][kMethodThreads]) {
  return L.select.need_ties ? sce_tie_prefix(L, tile) + counts[0][lane] : 0;
}

LADLE_HD void sce_apply_lane(const MethodLaunch& L, uint64_t tile, uint32_t lane, uint64_t seen) {
  LaneRange r = lane_range(L, tile, lane);
  float tv[kMaxTaskModels], b;
  for (uint64_t e = r.first; e < r.last; ++e) {
    if (!below(L.select, sce_bits_at(L, e, tv, &b), &seen))
      for (uint32_t k = 0; k < L.n_models; ++k) tv[k] = 0.0f;
    float mixed = sce_mixed_delta(
        L.n_models, [&tv](uint32_t k) { return tv[k]; },
        [&L](uint32_t k) { return L.models[k].weight; });
    store_one(L.out_dtype, L.out, e, add_rn(b, mixed));
  }
}

// Pass 1 on the GPU: every element lands in one of 32768 bins, and neighbouring
// deltas mostly in the same few, so per-element global atomics would serialise on the
// hot bins. Each block (one per SM, 1024 threads, 128 KiB of shared memory) counts its
// grid-stride share of the chunk into a shared histogram, per model, then adds the
// nonzero bins to the global one.
constexpr int kHistThreads = 1024;
constexpr unsigned kHistSharedBytes = kHiHistBins * sizeof(uint32_t);

template <bool kSce>
__global__ void __launch_bounds__(kHistThreads) hist_hi_kernel(MethodLaunch L) {
  extern __shared__ uint32_t bins[];
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * kHistThreads;
  const uint64_t first = static_cast<uint64_t>(blockIdx.x) * kHistThreads + threadIdx.x;
  for (uint32_t h = 0; h < n_hi_hists<kSce>(L); ++h) {
    if (!counts_hi<kSce>(L, h)) continue;
    for (uint32_t b = threadIdx.x; b < kHiHistBins; b += kHistThreads) bins[b] = 0;
    __syncthreads();
    unsigned long long nonzero = 0;
    for (uint64_t e = first; e < L.n_elems; e += stride) {
      uint32_t bits = hi_bits_at<kSce>(L, h, e);
      atomicAdd(&bins[bits >> 16], 1u);
      if constexpr (kSce) nonzero += bits != 0;
    }
    __syncthreads();
    unsigned long long* global = L.counts + static_cast<uint64_t>(h) * kHiHistBins;
    for (uint32_t b = threadIdx.x; b < kHiHistBins; b += kHistThreads)
      if (bins[b]) atomicAdd(global + b, static_cast<unsigned long long>(bins[b]));
    if (kSce && nonzero) atomicAdd(L.counts + kHiHistBins, nonzero);
    __syncthreads();
  }
}

template <bool kSce>
int launch_hist_hi(const MethodLaunch& L, cudaStream_t stream) {
  int device = 0, sm_count = 1;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess)
    err = cudaFuncSetAttribute(hist_hi_kernel<kSce>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               kHistSharedBytes);
  if (err != cudaSuccess) return static_cast<int>(err);
  uint64_t blocks = (L.n_elems + kHistThreads - 1) / kHistThreads;
  if (blocks > static_cast<uint64_t>(sm_count)) blocks = static_cast<uint64_t>(sm_count);
  hist_hi_kernel<kSce>
      <<<static_cast<unsigned>(blocks), kHistThreads, kHistSharedBytes, stream>>>(L);
  return static_cast<int>(cudaGetLastError());
}

bool is_chain_pass(const MethodLaunch& L) {
  return L.pass == kPassL1 || L.pass == kPassGram || L.pass == kPassSceSquares ||
         L.pass == kPassDot;
}

template <bool kSce>
__global__ void __launch_bounds__(kMethodThreads) chain_kernel(MethodLaunch L) {
  run_chain<kSce>(L, static_cast<uint64_t>(blockIdx.x) * kMethodThreads + threadIdx.x);
}

// SCE's passes but the first histogram and the sums of squares, one block per tile.
__global__ void __launch_bounds__(kMethodThreads) sce_kernel(MethodLaunch L) {
  const uint64_t tile = blockIdx.x;
  const uint32_t lane = threadIdx.x;
  if (L.pass != kPassSceApply) {
    sce_pass_lane(L, tile, lane);
    return;
  }
  __shared__ uint32_t counts[2][kMethodThreads];
  if (L.select.need_ties) {  // the same for the whole block
    sce_count_lane_ties(L, tile, lane, counts);
    __syncthreads();
    if (lane == 0) scan_counts(counts);
    __syncthreads();
  }
  sce_apply_lane(L, tile, lane, sce_cursor(L, tile, lane, counts));
}

__global__ void __launch_bounds__(kMethodThreads) method_kernel(MethodLaunch L) {
  const uint64_t tile = blockIdx.x;
  const uint32_t lane = threadIdx.x;
  if (L.pass != kPassApply) {
    simple_pass_lane(L, tile, lane);
    return;
  }
  __shared__ uint32_t counts[2][kMethodThreads];
  LaneCursors c;
  zero_cursors(L, &c);
  for (uint32_t k = 0; k < L.n_models; ++k) {
    if (!needs_scan(L, k)) continue;
    count_lane_ties(L, tile, lane, k, counts);
    __syncthreads();
    if (lane == 0) scan_counts(counts);
    __syncthreads();
    take_cursors(L, tile, lane, k, counts, &c);
    __syncthreads();
  }
  apply_lane(L, tile, lane, &c);
}

__global__ void __launch_bounds__(kSortThreads) della_rank_kernel(MethodLaunch L) {
  extern __shared__ uint64_t keys[];
  const uint64_t g = blockIdx.x;
  const uint32_t k = blockIdx.y, lane = threadIdx.x;
  if (!L.models[k].selects) return;  // the same for the whole block
  if (L.group_len > kSortElems) return rank_by_count(L, k, g, lane);
  const uint32_t n = sort_len(L);
  sort_load(L, k, g, lane, keys);
  __syncthreads();
  for (uint32_t size = 2; size <= n; size <<= 1)
    for (uint32_t stride = size / 2; stride > 0; stride >>= 1) {
      sort_step(keys, n, size, stride, lane);
      __syncthreads();
    }
  sort_store(L, k, g, lane, keys);
}

int launch_della_rank(const MethodLaunch& L, cudaStream_t stream) {
  unsigned smem = L.group_len > kSortElems ? 0u : sort_len(L) * 8u;
  cudaError_t err = cudaFuncSetAttribute(
      della_rank_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSortElems * 8);
  if (err != cudaSuccess) return static_cast<int>(err);
  dim3 grid(static_cast<unsigned>(n_rank_groups(L)), L.n_models);
  della_rank_kernel<<<grid, kSortThreads, smem, stream>>>(L);
  return static_cast<int>(cudaGetLastError());
}

void emulate_della_rank(const MethodLaunch& L) {
  std::vector<uint64_t> keys(L.group_len > kSortElems ? 0 : sort_len(L));
  const uint32_t n = static_cast<uint32_t>(keys.size());
  for (uint64_t g = 0; g < n_rank_groups(L); ++g)
    for (uint32_t k = 0; k < L.n_models; ++k) {  // the kernel's phases, barrier by barrier
      if (!L.models[k].selects) continue;
      if (L.group_len > kSortElems) {
        for (uint32_t lane = 0; lane < kSortThreads; ++lane) rank_by_count(L, k, g, lane);
        continue;
      }
      for (uint32_t lane = 0; lane < kSortThreads; ++lane) sort_load(L, k, g, lane, keys.data());
      for (uint32_t size = 2; size <= n; size <<= 1)
        for (uint32_t stride = size / 2; stride > 0; stride >>= 1)
          for (uint32_t lane = 0; lane < kSortThreads; ++lane)
            sort_step(keys.data(), n, size, stride, lane);
      for (uint32_t lane = 0; lane < kSortThreads; ++lane) sort_store(L, k, g, lane, keys.data());
    }
}

}  // namespace

int launch_method(const MethodLaunch& launch, void* stream) {
  if (launch.n_elems == 0) return 0;
  if (launch.pass == kPassDellaRank)
    return launch_della_rank(launch, static_cast<cudaStream_t>(stream));
  if (launch.n_tiles == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (launch.pass == kPassHistHi) return launch_hist_hi<false>(launch, s);
  if (launch.pass == kPassSceHistHi) return launch_hist_hi<true>(launch, s);
  if (is_chain_pass(launch)) {
    uint64_t n_chains = launch.n_tiles * chains_per_tile(launch);
    if (n_chains == 0) return 0;
    unsigned blocks = static_cast<unsigned>((n_chains + kMethodThreads - 1) / kMethodThreads);
    if (launch.pass == kPassSceSquares)
      chain_kernel<true><<<blocks, kMethodThreads, 0, s>>>(launch);
    else
      chain_kernel<false><<<blocks, kMethodThreads, 0, s>>>(launch);
    return static_cast<int>(cudaGetLastError());
  }
  unsigned blocks = static_cast<unsigned>(launch.n_tiles);
  if (is_sce_pass(launch)) sce_kernel<<<blocks, kMethodThreads, 0, s>>>(launch);
  else method_kernel<<<blocks, kMethodThreads, 0, s>>>(launch);
  return static_cast<int>(cudaGetLastError());
}

void emulate_method(const MethodLaunch& launch) {
  const MethodLaunch& L = launch;
  if (L.pass == kPassDellaRank) return emulate_della_rank(L);
  if (is_chain_pass(L)) {
    for (uint64_t chain = 0; chain < L.n_tiles * chains_per_tile(L); ++chain) {
      if (L.pass == kPassSceSquares) run_chain<true>(L, chain);
      else run_chain<false>(L, chain);
    }
    return;
  }
  for (uint64_t tile = 0; tile < L.n_tiles; ++tile) {
    if (L.pass == kPassSceApply) {  // sce_kernel's phases, barrier by barrier
      uint32_t counts[2][kMethodThreads] = {};
      if (L.select.need_ties) {
        for (uint32_t lane = 0; lane < kMethodThreads; ++lane)
          sce_count_lane_ties(L, tile, lane, counts);
        scan_counts(counts);
      }
      for (uint32_t lane = 0; lane < kMethodThreads; ++lane)
        sce_apply_lane(L, tile, lane, sce_cursor(L, tile, lane, counts));
      continue;
    }
    if (L.pass != kPassApply) {
      for (uint32_t lane = 0; lane < kMethodThreads; ++lane) {
        if (is_sce_pass(L)) sce_pass_lane(L, tile, lane);
        else simple_pass_lane(L, tile, lane);
      }
      continue;
    }
    uint32_t counts[2][kMethodThreads];
    std::vector<LaneCursors> c(kMethodThreads);
    for (LaneCursors& lane_cursors : c) zero_cursors(L, &lane_cursors);
    for (uint32_t k = 0; k < L.n_models; ++k) {  // the kernel's phases, barrier by barrier
      if (!needs_scan(L, k)) continue;
      for (uint32_t lane = 0; lane < kMethodThreads; ++lane) count_lane_ties(L, tile, lane, k, counts);
      scan_counts(counts);
      for (uint32_t lane = 0; lane < kMethodThreads; ++lane)
        take_cursors(L, tile, lane, k, counts, &c[lane]);
    }
    for (uint32_t lane = 0; lane < kMethodThreads; ++lane) apply_lane(L, tile, lane, &c[lane]);
  }
}

}  // namespace cuda
}  // namespace ladle
