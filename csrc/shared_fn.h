// LADLE_SHARED_FN marks the small inline functions compiled for the CPU runners and,
// under nvcc, for the CUDA kernels too (__host__ __device__): one source for the
// per-element formulas both backends must compute bit for bit.
#pragma once

#ifdef __CUDACC__
#define LADLE_SHARED_FN __host__ __device__ inline
#else
#define LADLE_SHARED_FN inline
#endif
