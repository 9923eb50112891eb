// DELLA and SCE jobs under the sanitizers (part of the C++ test driver): a few small
// jobs on memory sources through run_jobs (plan_runner.h), on 1 and 2 threads and
// several chunk lengths, whose bytes must agree; DELLA keeping everything checked
// against its formula; jobs with bad settings refused before anything runs.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"
#include "methods.h"
#include "plan_runner.h"

namespace ladle {

namespace {

constexpr uint64_t kRows = 8, kCols = 16, kInner = 4;  // shape [8, 16, 4]
constexpr uint64_t kN = kRows * kCols * kInner;

struct Buffers {
  std::vector<std::vector<float>> inputs;  // base, then the models
  std::vector<float> della, sce;
};

Buffers make_buffers() {
  Buffers b;
  for (int k = 0; k < 4; ++k) {
    std::vector<float> x(kN);
    // Small multiples of 1/8 (exact in fp32), different per model, with ties and zeros.
    for (uint64_t i = 0; i < kN; ++i)
      x[i] = static_cast<float>(static_cast<int>((i * (2 * k + 3) + 7 * k) % 23) - 11) / 8.0f;
    b.inputs.push_back(std::move(x));
  }
  b.della.assign(kN, 0.0f);
  b.sce.assign(kN, 0.0f);
  return b;
}

Plan make_plan(Buffers& b, float density, float epsilon, DellaRescale rescale, double topk) {
  Plan plan;
  for (size_t k = 0; k < b.inputs.size(); ++k)
    plan.sources.push_back({"x" + std::to_string(k),
                            reinterpret_cast<const uint8_t*>(b.inputs[k].data()), 4 * kN, nullptr});
  plan.sinks.push_back({"della", reinterpret_cast<uint8_t*>(b.della.data()), 4 * kN, nullptr});
  plan.sinks.push_back({"sce", reinterpret_cast<uint8_t*>(b.sce.data()), 4 * kN, nullptr});
  DellaJob d;
  d.name = "w.della";
  d.n_elems = kN;
  d.group_len = kCols;  // mergekit's dim 1
  d.group_stride = kInner;
  d.sink = 0;
  d.base = job_input(0, 0, DType::kF32, 1.0);
  const double weights[] = {0.5, -0.25, 1.0};
  for (uint32_t k = 1; k <= 3; ++k)
    d.models.push_back({job_input(k, 0, DType::kF32, weights[k - 1]), density, epsilon,
                        density - epsilon});
  d.elect_sign = rescale != DellaRescale::kNone;
  d.rescale = rescale;
  d.seed = 5;
  d.tensor_key = tensor_key(d.name);
  plan.dellas.push_back(d);
  SceJob s;
  s.name = "w.sce";
  s.n_elems = kN;
  s.sink = 1;
  s.base = job_input(0, 0, DType::kF32, 1.0);
  for (uint32_t k = 1; k <= 3; ++k) s.models.push_back(job_input(k, 0, DType::kF32, 1.0));
  s.select_topk = topk;
  plan.sces.push_back(s);
  return plan;
}

KindSet della_and_sce() { return KindSet().add(JobKind::kDella).add(JobKind::kSce); }

std::string bytes_of(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

}  // namespace

void method_runs(void (*expect)(bool, const std::string&)) {
  const DellaRescale rescales[] = {DellaRescale::kNone, DellaRescale::kL1,
                                   DellaRescale::kProbability};
  for (DellaRescale rescale : rescales) {
    std::string want_della, want_sce;
    for (int threads : {1, 2}) {
      for (uint64_t chunk : {0ull, 64ull, 192ull}) {
        Buffers b = make_buffers();
        Plan plan = make_plan(b, 0.5f, 0.1f, rescale, 0.5);
        EngineOptions options;
        options.threads = threads;
        options.chunk_elems = chunk;
        options.check_finite = true;
        run_jobs(plan, della_and_sce(), options, nullptr);
        if (want_della.empty()) {
          want_della = bytes_of(b.della);
          want_sce = bytes_of(b.sce);
          expect(b.della != std::vector<float>(kN, 0.0f) && b.sce != std::vector<float>(kN, 0.0f),
                 "della and sce wrote their outputs");
        }
        expect(bytes_of(b.della) == want_della,
               "della bytes do not depend on threads " + std::to_string(threads) + ", chunk " +
                   std::to_string(chunk));
        expect(bytes_of(b.sce) == want_sce, "sce bytes do not depend on threads or chunks");
      }
    }
  }
  // della_linear keeping everything: base + sum_k fp32(w_k * delta_k), in model order.
  {
    Buffers b = make_buffers();
    Plan plan = make_plan(b, 1.0f, 0.0f, DellaRescale::kNone, 1.0);
    run_jobs(plan, KindSet().add(JobKind::kDella), EngineOptions{}, nullptr);
    bool exact = true;
    const float w[] = {0.5f, -0.25f, 1.0f};
    for (uint64_t i = 0; i < kN; ++i) {
      float mix = 0.0f;
      for (int k = 1; k <= 3; ++k) mix += w[k - 1] * (b.inputs[k][i] - b.inputs[0][i]);
      exact = exact && b.della[i] == b.inputs[0][i] + mix;
    }
    expect(exact, "della_linear with density 1 is base + sum of weighted deltas");
  }
  // Bad settings: refused by the one validation of a run of several kinds.
  auto refused = [&](const std::string& what, Plan& plan) {
    try {
      run_jobs(plan, della_and_sce(), EngineOptions{}, nullptr);
      expect(false, what + ": no error raised");
    } catch (const Error& e) {
      expect(e.kind() == ErrorKind::kValue, what + ": wrong error kind: " + e.what());
      std::printf("  ok  %s -> %s\n", what.c_str(), e.what());
    }
  };
  {
    Buffers b = make_buffers();
    Plan plan = make_plan(b, 0.5f, 0.6f, DellaRescale::kNone, 0.5);  // p spans [-0.1, 1.1]
    refused("della keep probabilities outside (0, 1)", plan);
    expect(b.sce == std::vector<float>(kN, 0.0f), "sce wrote nothing before della's error");
  }
  {
    Buffers b = make_buffers();
    Plan plan = make_plan(b, 0.5f, 0.1f, DellaRescale::kNone, 0.5);
    plan.sces[0].models.clear();
    refused("sce without models", plan);
    expect(b.della == std::vector<float>(kN, 0.0f), "della wrote nothing before sce's error");
  }
  {
    Buffers b = make_buffers();
    Plan plan = make_plan(b, 0.5f, 0.1f, DellaRescale::kNone, 0.5);
    plan.dellas[0].group_len = 5;  // 512 elements are not whole blocks of 5 * 4
    refused("della rank groups that do not tile the tensor", plan);
  }
}

}  // namespace ladle
