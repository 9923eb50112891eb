#include "reduce.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "chunk_runner.h"
#include "common.h"
#include "method_kernels.h"
#include "safetensors.h"

namespace ladle {
namespace {

// The summation order (reduce.h), the Gram pass's: tiles of kTile elements summed in
// element order, the tensor tile by tile, each from +0. Chunks are whole tiles, so
// neither their length nor the threads change a bit.
constexpr size_t kTile = kMethodTileElems;
constexpr uint64_t kMinChunk = 16 * 1024;
constexpr uint64_t kMaxChunk = kCpuMaxChunkElems;

// Decodes n elements of `dtype` at `src` to fp64 (exact for every float dtype).
void load_f64(DType dtype, const uint8_t* src, double* dst, size_t n) {
  switch (dtype) {
    case DType::kF32: {
      const float* p = reinterpret_cast<const float*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = p[i];
      return;
    }
    case DType::kBF16: {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(p[i]);
      return;
    }
    case DType::kF16: {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(p[i]);
      return;
    }
    case DType::kF64: {
      const double* p = reinterpret_cast<const double*>(src);
      std::copy(p, p + n, dst);
      return;
    }
    default:
      raise(ErrorKind::kValue, format("cannot take dot products of dtype %s", dtype_name(dtype)));
  }
}


// The tile sums of one chunk (whole tiles but for a tensor's last): out[t * N + k] for
// its t-th tile and input k.
void dot_chunk(const Plan& plan, const DotJob& job, const WorkItem& item, double* out) {
  double g[kTile], x[kTile];
  size_t n_in = job.inputs.size();
  const uint8_t* g_base = plan.sources[job.lhs.source].base + job.lhs.offset;
  for (uint64_t t = 0; t < item.n_elems; t += kTile) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kTile, item.n_elems - t));
    uint64_t elem = item.first_elem + t;
    double* tile = out + (t / kTile) * n_in;
    guard_reads(plan, job.name, [&] {
      load_f64(job.lhs.dtype, g_base + elem * item_n_bytes(job.lhs.dtype), g, n);
    });
    for (size_t k = 0; k < n_in; ++k) {
      const JobInput& in = job.inputs[k];
      const uint8_t* src = plan.sources[in.source].base + in.offset + elem * item_n_bytes(in.dtype);
      guard_reads(plan, job.name, [&] { load_f64(in.dtype, src, x, n); });
      double acc = 0.0;
      for (size_t i = 0; i < n; ++i) acc += g[i] * x[i];
      tile[k] = acc;
    }
  }
}

}  // namespace

void validate_dot_job(const Plan& plan, const DotJob& job) {
  validate_input(plan, job.name, job.lhs, job.n_elems, true);
  for (const JobInput& in : job.inputs) validate_input(plan, job.name, in, job.n_elems, true);
}

std::vector<std::vector<double>> dot_products(const Plan& plan, const std::vector<DotJob>& jobs,
                                              const DotOptions& options) {
  uint64_t per_elem = 1;
  for (const DotJob& job : jobs) {
    validate_dot_job(plan, job);
    uint64_t bytes = item_n_bytes(job.lhs.dtype);
    for (const JobInput& in : job.inputs) bytes += 2 * item_n_bytes(in.dtype);
    per_elem = std::max(per_elem, bytes);
  }
  int threads = resolve_threads(options.threads);
  uint64_t chunk = options.chunk_elems;
  if (chunk == 0) {
    chunk = budget_chunk_elems(options.memory_budget, per_elem, static_cast<uint64_t>(threads),
                               kTile, kMinChunk, kMaxChunk);
  }
  chunk = (chunk + kTile - 1) / kTile * kTile;  // whole tiles
  std::vector<WorkItem> items;
  for (uint32_t j = 0; j < jobs.size(); ++j)
    for (uint64_t first = 0; first < jobs[j].n_elems; first += chunk)
      items.push_back({j, first, std::min(chunk, jobs[j].n_elems - first)});
  std::vector<std::vector<JobInput>> inputs(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    inputs[j].push_back(jobs[j].lhs);
    inputs[j].insert(inputs[j].end(), jobs[j].inputs.begin(), jobs[j].inputs.end());
  }
  std::vector<std::vector<double>> out(jobs.size());
  for (uint32_t j = 0; j < jobs.size(); ++j) out[j].assign(jobs[j].inputs.size(), 0.0);
  // Tile sums are added to the totals in item order as items finish: those done early
  // wait here (a few, as the pool hands items out in order), the rest are folded.
  std::mutex mu;
  size_t next = 0;
  std::map<size_t, std::vector<double>> waiting;
  auto fold = [&](size_t i, const std::vector<double>& tiles) {
    std::vector<double>& dst = out[items[i].job];
    for (size_t t = 0; t < tiles.size(); t += dst.size())
      for (size_t k = 0; k < dst.size(); ++k) dst[k] += tiles[t + k];
  };
  ChunkPool pool(plan, threads, 1, nullptr, 0);
  pool.run(
      items, [&](const WorkItem& item) -> const std::vector<JobInput>& { return inputs[item.job]; },
      [&](const WorkItem& item, int) {
        size_t i = static_cast<size_t>(&item - items.data());
        uint64_t n_tiles = (item.n_elems + kTile - 1) / kTile;
        std::vector<double> tiles(n_tiles * jobs[item.job].inputs.size());
        dot_chunk(plan, jobs[item.job], item, tiles.data());
        std::lock_guard<std::mutex> guard(mu);
        waiting.emplace(i, std::move(tiles));
        for (auto it = waiting.find(next); it != waiting.end(); it = waiting.find(++next)) {
          fold(next, it->second);
          waiting.erase(it);
        }
      });
  return out;
}

}  // namespace ladle
