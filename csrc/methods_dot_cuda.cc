// CUDA runner of the dot-product jobs (reduce.h: the learned soup's <g, x_k>): per chunk
// of whole tiles, one chain pass (kPassDot) sums each tile of g · x_k in element order
// in fp64 on the device, and the host adds the tile sums in tile order: the CPU's
// order, so the same bits. A job of more inputs than one model table holds runs them in
// groups over the same staged chunk.
#include <algorithm>
#include <chrono>

#include "chunk_runner.h"
#include "method_kernels_cuda.h"
#include "method_stage_cuda.h"
#include "methods_cuda.h"
#include "reduce.h"

namespace ladle {
namespace cuda {
namespace {

constexpr size_t kGroup = kMaxTaskModels - 1;  // x_k per launch, beside g

std::vector<JobInput> dot_inputs(const DotJob& job) {
  std::vector<JobInput> inputs{job.lhs};
  inputs.insert(inputs.end(), job.inputs.begin(), job.inputs.end());
  return inputs;
}

ModelDesc desc_of(const Stage& stage, const std::vector<JobInput>& inputs, size_t i) {
  ModelDesc d;
  d.ptr = stage.device_input(i);
  d.dtype = static_cast<uint32_t>(inputs[i].dtype);
  return d;
}

}  // namespace

std::vector<std::vector<double>> run_dot_jobs(const Plan& plan, const std::vector<DotJob>& jobs,
                                              const Options& options, const ProgressFn& progress,
                                              RunStats* stats) {
  auto t0 = std::chrono::steady_clock::now();
  std::vector<StagedJob> staged;  // inputs only: a reduction writes no output
  uint64_t total = 0, per_elem = 1;
  for (const DotJob& job : jobs) {
    validate_dot_job(plan, job);
    staged.push_back({dot_inputs(job), DType::kF32, job.n_elems});
    total += read_n_bytes(staged.back().inputs, job.n_elems);
    per_elem = std::max(per_elem, read_n_bytes(staged.back().inputs, 1));
  }
  uint64_t chunk = chunk_elems_for(per_elem, 0, options);
  StageBytes bytes = stage_bytes(staged, chunk);  // .in: the staged inputs
  std::vector<std::vector<double>> result(jobs.size());
  RunStats run_stats;
  {
    Stage stage(options, bytes.in, 1, 1, kGroup * tiles_of(chunk),
                static_cast<uint32_t>(kGroup + 1));
    Progress bar(progress, total);
    std::vector<double> sums;
    for (size_t j = 0; j < jobs.size(); ++j) {
      const std::vector<JobInput>& inputs = staged[j].inputs;
      std::vector<double>& out = result[j];
      out.assign(jobs[j].inputs.size(), 0.0);
      for (uint64_t first = 0; first < jobs[j].n_elems; first += chunk) {
        uint64_t n = std::min(chunk, jobs[j].n_elems - first), n_tiles = tiles_of(n);
        run_stats.bytes_read += stage.stage(plan, jobs[j].name, inputs, j, first, n);
        for (size_t g0 = 0; g0 < out.size(); g0 += kGroup) {
          size_t group = std::min(kGroup, out.size() - g0);
          std::vector<ModelDesc> models{desc_of(stage, inputs, 0)};
          for (size_t k = 0; k < group; ++k) models.push_back(desc_of(stage, inputs, 1 + g0 + k));
          MethodLaunch L;
          L.pass = kPassDot;
          L.first_elem = first;
          L.n_elems = n;
          L.n_tiles = n_tiles;
          stage.launch(&L, models, 0, nullptr);
          stage.sums_to(&sums, group * n_tiles);
          for (size_t k = 0; k < group; ++k)  // tile by tile, in order
            for (uint64_t t = 0; t < n_tiles; ++t) out[g0 + k] += sums[k * n_tiles + t];
        }
        ++run_stats.n_chunks;
        bar.add(read_n_bytes(inputs, n));
      }
    }
    finish_stats(&run_stats, chunk, stage, t0);
  }
  if (stats) *stats = run_stats;
  return result;
}

}  // namespace cuda
}  // namespace ladle
