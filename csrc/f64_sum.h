// The fp64 weighted sum of one chunk (jobs with an F64 input or output, see
// job_in_f64): shared by the CPU engine and the CUDA engine, which computes
// these jobs on the host like its pass-through copies.
#pragma once

#include <cstdint>

#include "chunk_runner.h"

namespace ladle {

// out[i] for the chunk's elements: acc = w1*x1; acc = acc + wk*xk in fp64 with
// JobInput::weight_f64, zero weights skipped, stored by store_f64.
void weighted_sum_f64(const ChunkSet& chunks, const Job& job, const WorkItem& item,
                      bool check_finite, uint8_t* out);

}  // namespace ladle
