// fff_cuda.cu: UltraFastBERT fast feedforward, inference form, on a GPU (plain CUDA; torch binding in
// cpp/fff_cuda.cpp). Belcak & Wattenhofer 2023, arXiv:2311.10770.
//
// Shapes: x is (B, H_in), w_in is (K*N, H_in), b_in is (K*N), wt_out is (K*N, H_out) (w_out transposed so
// a node's output weights are one contiguous row), y is (B, H_out); route and act are (B, L), L = K*(D+1).
// N = 2^(D+1) - 1, tree t's node i is row t*N + i, children 2i+1 and 2i+2, go right iff z > 0.
// Napkin math per token, 1x11 at H = 768: 36.9 kFLOP and 24 rows * 3 KiB = 72 KiB of weight reads (most
// from L2: 25 MB of weights fit the 50 MB L2 of an H100), so a batch is bound by L2 bandwidth, not FLOPs.
//
//   v1  one thread per token (the anchor's naive kernel): each thread reads whole rows alone, so the 32
//       threads of a warp touch 32 different rows at once: uncoalesced.
//   v2  one warp per token: the 32 lanes read consecutive floats of the same row (coalesced), reduce the
//       dot product with shuffles, and split the output row between them.

#include <cuda_runtime.h>
#include <stdint.h>

#include "fff_cuda.h"

namespace {

__device__ __forceinline__ float gelu(float z) { return 0.5f * z * (1.0f + erff(z * 0.70710678118654752440f)); }

__global__ void fff_thread_per_token(const float* __restrict__ x, const float* __restrict__ w_in,
                                     const float* __restrict__ b_in, const float* __restrict__ wt,
                                     float* __restrict__ y, int32_t* __restrict__ route, float* __restrict__ act,
                                     int64_t B, int64_t H_in, int64_t H_out, int depth, int n_trees) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= B) return;
  const int64_t N = (int64_t(1) << (depth + 1)) - 1;
  const int L = n_trees * (depth + 1);
  const float* xt = x + t * H_in;
  int j = 0;
  for (int k = 0; k < n_trees; ++k) {
    int64_t n = 0;
    for (int l = 0; l <= depth; ++l, ++j) {
      const int64_t r = k * N + n;
      const float* w = w_in + r * H_in;
      float z = 0.f;
      for (int64_t h = 0; h < H_in; ++h) z += xt[h] * w[h];
      z += b_in[r];
      route[t * L + j] = (int32_t)r;
      act[t * L + j] = gelu(z);
      n = 2 * n + 1 + (z > 0.f);
    }
  }
  for (int64_t h = 0; h < H_out; ++h) {
    float s = 0.f;
    for (int q = 0; q < L; ++q) s += act[t * L + q] * wt[(int64_t)route[t * L + q] * H_out + h];
    y[t * H_out + h] = s;
  }
}

__global__ void fff_warp_per_token(const float* __restrict__ x, const float* __restrict__ w_in,
                                   const float* __restrict__ b_in, const float* __restrict__ wt,
                                   float* __restrict__ y, int32_t* __restrict__ route, float* __restrict__ act,
                                   int64_t B, int64_t H_in, int64_t H_out, int depth, int n_trees) {
  const int lane = threadIdx.x & 31;
  const int64_t t = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  if (t >= B) return;  // whole warps leave together: t is the same for all 32 lanes
  const int64_t N = (int64_t(1) << (depth + 1)) - 1;
  const int L = n_trees * (depth + 1);
  const float* xt = x + t * H_in;
  int j = 0;
  for (int k = 0; k < n_trees; ++k) {
    int64_t n = 0;
    for (int l = 0; l <= depth; ++l, ++j) {
      const int64_t r = k * N + n;
      const float* w = w_in + r * H_in;
      float z = 0.f;
      for (int64_t h = lane; h < H_in; h += 32) z += xt[h] * w[h];  // coalesced: lanes read neighbours
      for (int off = 16; off > 0; off >>= 1) z += __shfl_xor_sync(0xffffffffu, z, off);
      z += b_in[r];  // every lane now holds the same z, so every lane takes the same branch
      if (lane == 0) {
        route[t * L + j] = (int32_t)r;
        act[t * L + j] = gelu(z);
      }
      n = 2 * n + 1 + (z > 0.f);
    }
  }
  __syncwarp();
  for (int64_t h = lane; h < H_out; h += 32) {
    float s = 0.f;
    for (int q = 0; q < L; ++q) s += act[t * L + q] * wt[(int64_t)route[t * L + q] * H_out + h];
    y[t * H_out + h] = s;
  }
}

}  // namespace

extern "C" int ufkit_fff_cuda_forward(const float* x, const float* w_in, const float* b_in, const float* wt_out,
                                      float* y, int32_t* route, float* act, int64_t B, int64_t H_in, int64_t H_out,
                                      int depth, int n_trees, int version, void* stream) {
  if (B == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int threads = 128;
  if (version == 1) {
    const int64_t blocks = (B + threads - 1) / threads;
    fff_thread_per_token<<<(unsigned)blocks, threads, 0, s>>>(x, w_in, b_in, wt_out, y, route, act, B, H_in, H_out,
                                                               depth, n_trees);
  } else {
    const int64_t blocks = (B * 32 + threads - 1) / threads;
    fff_warp_per_token<<<(unsigned)blocks, threads, 0, s>>>(x, w_in, b_in, wt_out, y, route, act, B, H_in, H_out,
                                                             depth, n_trees);
  }
  return (int)cudaGetLastError();
}
