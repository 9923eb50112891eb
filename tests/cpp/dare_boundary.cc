// DARE's keep test at its exact boundary (part of the C++ test driver): the vector
// kernels decide u < ceil(density * 2^24) on integers where the scalar reference
// compares float(u) * 2^-24 < density. Elements whose draw u is T - 1 or T (T that
// ceiling) are searched in one stream, then every kernel set the CPU runs decides
// them (at every lane position of a vector) and must agree with the reference.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels.h"
#include "method_kernels.h"

namespace ladle {

void dare_boundary_runs(void (*expect)(bool, const std::string&)) {
  const uint64_t stream = dare_stream(42, 7, 0);
  // Densities whose T is a power of two, just below one, and zero.
  const std::vector<float> densities = {0.5f, 0.25f, 0.99999994f, 0.0f, 0.75f};
  std::vector<uint32_t> targets;
  for (float d : densities) {
    auto t = static_cast<uint32_t>(std::ceil(static_cast<double>(d) * 16777216.0));
    if (t > 0) targets.push_back(t - 1);
    if (t < (1u << 24)) targets.push_back(t);
  }
  std::vector<uint64_t> found(targets.size(), UINT64_MAX);
  size_t missing = targets.size();
  for (uint64_t e = 0; e < (1ull << 27) && missing > 0; ++e) {
    uint32_t u = dare_draw(stream, e);
    for (size_t i = 0; i < targets.size(); ++i)
      if (found[i] == UINT64_MAX && u == targets[i]) found[i] = e, --missing;
  }
  expect(missing == 0, "dare boundary: every boundary draw found in the stream");
  std::vector<const MethodKernels*> sets = {&scalar_method_kernels()};
  if (cpu_supports_avx2() && avx2_method_kernels()) sets.push_back(avx2_method_kernels());
  if (cpu_supports_avx512() && avx512_method_kernels()) sets.push_back(avx512_method_kernels());
  for (uint64_t e : found) {
    if (e == UINT64_MAX) continue;
    for (float density : densities) {
      for (uint64_t lane = 0; lane < 16 && lane <= e; lane += 5) {
        uint64_t first = e - lane;  // the element sits at `lane` of the run
        std::vector<float> want(32, 1.5f);
        std::vector<uint64_t> want_keep(1, 0);
        scalar_method_kernels().sparsify_random(want.data(), 32, stream, first, density, true,
                                                want_keep.data());
        bool kept = static_cast<float>(dare_draw(stream, e)) * 0x1p-24f < density;
        expect(((want_keep[0] >> lane) & 1) == kept, "dare boundary: scalar follows dare_keeps");
        for (const MethodKernels* k : sets) {
          std::vector<float> got(32, 1.5f);
          std::vector<uint64_t> keep(1, 0);
          k->sparsify_random(got.data(), 32, stream, first, density, true, keep.data());
          expect(got == want && keep == want_keep,
                 std::string("dare boundary: ") + k->name + " matches the scalar reference at u = " +
                     std::to_string(dare_draw(stream, e)) + ", density " + std::to_string(density));
        }
      }
    }
  }
}

}  // namespace ladle
