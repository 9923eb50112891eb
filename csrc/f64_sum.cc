#include "f64_sum.h"

#include <algorithm>

#include "kernels.h"

namespace ladle {

void weighted_sum_f64(const ChunkSet& chunks, const Job& job, const WorkItem& item,
                      bool check_finite, uint8_t* out) {
  constexpr size_t kTileElems = 1024;  // 8 KiB accumulator: stays in L1
  double acc[kTileElems];
  uint64_t out_size = item_n_bytes(job.out_dtype);
  for (uint64_t t = 0; t < item.n_elems; t += kTileElems) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kTileElems, item.n_elems - t));
    uint64_t elem = item.first_elem + t;
    bool first = true;
    for (const JobInput& in : job.inputs) {
      if (in.weight_f64 == 0.0) continue;  // zero weights skip their input entirely
      const uint8_t* src = chunks.input_ptr(in, elem);
      if (check_finite) chunks.check_input_finite(job, in, src, n, elem);
      accumulate_f64(in.dtype, src, in.weight_f64, acc, n, first);
      first = false;
    }
    if (first) std::fill(acc, acc + n, 0.0);  // every weight was zero
    uint8_t* dst = out + t * out_size;
    store_f64(job.out_dtype, acc, job.post_scale, dst, n);
    if (check_finite) chunks.check_output_finite(job, dst, n, elem);
  }
}

}  // namespace ladle
