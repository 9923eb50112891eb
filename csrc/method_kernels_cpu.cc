// Scalar reference of method_kernels.h (the contract of docs/methods.md written out
// element by element) and the run-time choice between it and the AVX2 set.
#include <algorithm>
#include <cmath>

#include "method_kernels.h"
#include "method_sce_elems.h"

namespace ladle {
namespace {

void delta_scalar(DType dtype, const void* src, const float* base, float* d, size_t n) {
  scalar_kernels().accumulate(dtype, src, 1.0f, d, n, true);
  for (size_t i = 0; i < n; ++i) d[i] = d[i] - base[i];
}

void histogram_hi_scalar(const float* d, size_t n, uint32_t* hist) {
  for (size_t i = 0; i < n; ++i) ++hist[(i % kHiHistCopies) * kHiHistBins + (abs_bits(d[i]) >> 16)];
}

size_t histogram_lo_scalar(const float* d, size_t n, uint32_t bin, uint32_t* hist,
                           uint16_t* found) {
  size_t count = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits = abs_bits(d[i]);
    if ((bits >> 16) != bin) continue;
    ++hist[bits & 0xFFFFu];
    if (found) found[count] = static_cast<uint16_t>(bits);
    ++count;
  }
  return count;
}

uint64_t count_equal_scalar(const float* d, size_t n, uint32_t bits) {
  uint64_t count = 0;
  for (size_t i = 0; i < n; ++i) count += abs_bits(d[i]) == bits;
  return count;
}

void window_scan_scalar(DType dtype, const void* src, const float* base, size_t n,
                        ScanWindow* windows, size_t n_windows) {
  for (size_t w = 0; w < n_windows; ++w) windows[w].count = 0;
  float d[256];  // the deltas of a run of elements, as delta_scalar computes them
  size_t item = static_cast<size_t>(dtype_bits(dtype) / 8);
  for (size_t first = 0; first < n; first += 256) {
    size_t m = std::min<size_t>(256, n - first);
    delta_scalar(dtype, static_cast<const uint8_t*>(src) + first * item, base + first, d, m);
    for (size_t w = 0; w < n_windows; ++w) {
      ScanWindow& win = windows[w];
      for (size_t i = 0; i < m; ++i) {
        uint32_t bits = abs_bits(d[i]);
        win.above += bits > win.w_hi;
        if (bits >= win.w_lo && bits <= win.w_hi) win.found[win.count++] = bits;
      }
    }
  }
}

void sparsify_random_scalar(float* d, size_t n, uint64_t stream, uint64_t elem, float density,
                            bool by_density, uint64_t* keep) {
  for (size_t i = 0; i < n; ++i) {
    bool kept = dare_keeps(stream, elem + i, density);
    d[i] = kept ? (by_density ? d[i] / density : d[i]) : 0.0f;
    if (keep) keep[i / 64] |= static_cast<uint64_t>(kept) << (i % 64);
  }
}

void sparsify_prob_scalar(float* d, const float* p, size_t n, uint64_t stream, uint64_t elem,
                          bool by_probability, uint64_t* keep) {
  for (size_t i = 0; i < n; ++i) {
    bool kept = dare_keeps(stream, elem + i, p[i]);
    d[i] = kept ? (by_probability ? d[i] / p[i] : d[i]) : 0.0f;
    if (keep) keep[i / 64] |= static_cast<uint64_t>(kept) << (i % 64);
  }
}

void sce_variance_scalar(const float* tv, size_t stride, size_t m, size_t n, uint32_t* bits) {
  for (size_t i = 0; i < n; ++i)
    bits[i] = sce_variance_bits(static_cast<uint32_t>(m),
                                [&](uint32_t k) { return tv[k * stride + i]; });
}

void rank_keep_scalar(const uint32_t* bits, size_t n, RankWindowBound* b, uint64_t* keep) {
  for (size_t i = 0; i < n; ++i)
    keep[i / 64] |= static_cast<uint64_t>(rank_below(b, bits[i])) << (i % 64);
}

void sce_mix_scalar(const float* tv, size_t stride, size_t m, const float* w, const float* base,
                    float* out, size_t n) {
  for (size_t i = 0; i < n; ++i)
    out[i] = base[i] + sce_mixed_delta(static_cast<uint32_t>(m),
                                       [&](uint32_t k) { return tv[k * stride + i]; },
                                       [&](uint32_t k) { return w[k]; });
}

void sparsify_kept_scalar(float* d, size_t n, const uint64_t* keep, float density,
                          bool by_density) {
  for (size_t i = 0; i < n; ++i) {
    bool kept = (keep[i / 64] >> (i % 64)) & 1;
    d[i] = kept ? (by_density ? d[i] / density : d[i]) : 0.0f;
  }
}

void sparsify_rank_scalar(float* d, size_t n, RankWindowBound* lo, RankWindowBound* hi) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits = abs_bits(d[i]);
    bool below_lo = rank_below(lo, bits);
    bool below_hi = rank_below(hi, bits);
    d[i] = (!below_lo && below_hi) ? d[i] : 0.0f;
  }
}

void scale_scalar(float* d, size_t n, float s) {
  for (size_t i = 0; i < n; ++i) d[i] = d[i] * s;
}

void l1_sums_scalar(const float* const* v, size_t m, double* sums) {
  for (size_t a = 0; a < m; ++a) {
    for (size_t t = 0; t < kGramTiles; ++t) {
      const float* x = v[a] + t * kMethodTileElems;
      double sum = 0.0;
      for (size_t i = 0; i < kMethodTileElems; ++i) sum += std::fabs(static_cast<double>(x[i]));
      sums[a * kGramTiles + t] = sum;
    }
  }
}

inline int sign_of(float x) { return (x > 0.0f) - (x < 0.0f); }

void mix_scalar(const MixSpec& spec, const float* wd, size_t stride, size_t n_models,
                const float* base, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    float sum = 0.0f, divisor = spec.plain_divisor;
    if (spec.consensus == MixConsensus::kNone) {
      for (size_t k = 0; k < n_models; ++k) sum = sum + wd[k * stride + i];
    } else {
      int majority;
      if (spec.consensus == MixConsensus::kSum) {
        float total = 0.0f;
        for (size_t k = 0; k < n_models; ++k) total = total + wd[k * stride + i];
        majority = total >= 0.0f ? 1 : -1;
      } else {
        int count = 0;
        for (size_t k = 0; k < n_models; ++k) count += sign_of(wd[k * stride + i]);
        majority = count >= 0 ? 1 : -1;
      }
      float weight = 0.0f;
      for (size_t k = 0; k < n_models; ++k) {
        float v = wd[k * stride + i];
        if (sign_of(v) != majority) continue;
        sum = sum + v;
        weight = weight + spec.weights[k];
      }
      divisor = weight == 0.0f ? 1.0f : weight;
    }
    if (spec.normalize) sum = sum / divisor;
    if (spec.lambda != 1.0f) sum = sum * spec.lambda;
    out[i] = base[i] + sum;
  }
}

void gram_scalar(const float* const* v, size_t m, double* sums) {
  size_t pair = 0;
  for (size_t a = 0; a < m; ++a) {
    for (size_t b = a; b < m; ++b, ++pair) {
      for (size_t t = 0; t < kGramTiles; ++t) {
        const float* x = v[a] + t * kMethodTileElems;
        const float* y = v[b] + t * kMethodTileElems;
        double sum = 0.0;
        for (size_t i = 0; i < kMethodTileElems; ++i)
          sum += static_cast<double>(x[i]) * static_cast<double>(y[i]);
        sums[pair * kGramTiles + t] = sum;
      }
    }
  }
}

void task_tile_scalar(TaskTile& tile, const float* base, float* out, size_t n) {
  task_tile_composed(scalar_method_kernels(), tile, base, out, n);
}

const MethodKernels kScalar{"scalar",           delta_scalar,           histogram_hi_scalar,
                            histogram_lo_scalar,  count_equal_scalar,     window_scan_scalar,
                            sparsify_random_scalar,
                            sparsify_kept_scalar, sparsify_rank_scalar,   scale_scalar,
                            l1_sums_scalar,       mix_scalar,             gram_scalar,
                            task_tile_scalar,     nullptr,                nullptr,
                            sparsify_prob_scalar, sce_variance_scalar,    rank_keep_scalar,
                            sce_mix_scalar};

}  // namespace

void task_tile_composed(const MethodKernels& k, TaskTile& tile, const float* base, float* out,
                        size_t n) {
  for (size_t m = 0; m < tile.n_models; ++m) {
    TileModel& model = tile.models[m];
    float* d = tile.wd + m * kMethodTileElems;
    k.delta(model.dtype, model.src, base, d, n);
    switch (tile.sparsify) {
      case TileSparsify::kNone:
        break;
      case TileSparsify::kRank:
        k.sparsify_rank(d, n, &model.lo, &model.hi);
        break;
      case TileSparsify::kRandom:
        k.sparsify_random(d, n, model.stream, tile.elem, model.density, model.by_density,
                          nullptr);
        break;
      case TileSparsify::kKept:
        k.sparsify_kept(d, n, model.keep, model.density, model.by_density);
        break;
    }
    if (model.scaled) k.scale(d, n, model.scale);
    // x * 1 is x (a signalling NaN aside, which the mix quiets or drops anyway).
    if (model.weight != 1.0f) k.scale(d, n, model.weight);
  }
  k.mix(tile.mix, tile.wd, kMethodTileElems, tile.n_models, base, out, n);
}

const MethodKernels& scalar_method_kernels() { return kScalar; }

void gram_short(const float* const* v, size_t m, size_t n, double* sums) {
  size_t n_pairs = m * (m + 1) / 2;
  for (size_t p = 0; p < n_pairs; ++p) sums[p] = 0.0;
  for (size_t i = 0; i < n; ++i) {
    size_t pair = 0;
    for (size_t a = 0; a < m; ++a) {
      double x = static_cast<double>(v[a][i]);
      for (size_t b = a; b < m; ++b, ++pair) sums[pair] += x * static_cast<double>(v[b][i]);
    }
  }
}

void near_swap_tile(const float* a, const float* b, float t, float* out, size_t n) {
  const float kMinDiff = 1e-6f;
  for (size_t i = 0; i < n; ++i) {
    float diff = std::fabs(a[i] - b[i]);
    float den = diff < kMinDiff ? kMinDiff : diff;  // NaN stays NaN
    float w = (1.0f / den) * t;                     // torch: t / x is x.reciprocal() * t
    w = w < 0.0f ? 0.0f : (w > 1.0f ? 1.0f : w);
    float kept = w * b[i];
    float rest = (1.0f - w) * a[i];
    out[i] = kept + rest;
  }
}

#ifndef LADLE_HAVE_AVX2
const MethodKernels* avx2_method_kernels() { return nullptr; }
#endif
#ifndef LADLE_HAVE_AVX512
const MethodKernels* avx512_method_kernels() { return nullptr; }
#endif

const MethodKernels& select_method_kernels(KernelImpl impl) {
  const KernelSet& chosen = select_kernels(impl);  // raises when a set is asked but missing
  const MethodKernels* avx2 = avx2_method_kernels();
  if (avx2 == nullptr || &chosen != avx2_kernels()) return kScalar;
  const MethodKernels* avx512 = avx512_method_kernels();
  bool wide = impl == KernelImpl::kAvx512 || impl == KernelImpl::kAuto;
  return wide && avx512 != nullptr && cpu_supports_avx512() ? *avx512 : *avx2;
}

}  // namespace ladle
