// fff_cuda.h: C interface of the CUDA FFF kernels (plain CUDA, no torch). Shapes as in fff_cuda.cu.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// y (B, H_out) = FFF(x); route (B, L) int32 and act (B, L) float are device scratch that also return the
// visited rows and their GELU values, L = n_trees * (depth + 1). version 1: a thread per token; 2: a warp
// per token. stream is a cudaStream_t (0: the default stream). Returns a cudaError_t (0 = success).
int ufkit_fff_cuda_forward(const float* x, const float* w_in, const float* b_in, const float* wt_out, float* y,
                           int32_t* route, float* act, int64_t B, int64_t H_in, int64_t H_out, int depth,
                           int n_trees, int version, void* stream);

#ifdef __cplusplus
}
#endif
