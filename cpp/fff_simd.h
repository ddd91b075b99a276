// fff_simd.h: the small vector routines the CPU FFF kernels are made of (dot product, multi-token dot,
// weighted sum of rows, prefetch), three times: plain C++, AVX2+FMA and AVX-512. Shared by fff_native.cpp and
// fff_mkl.cpp.
//
// One build runs on any x86-64: the file compiles with the default flags, the AVX2 and AVX-512 versions carry
// __attribute__((target)) and are only called after a cpuid check (cpu_has_avx2(), cpu_has_avx512()); a build
// cached on one machine stays safe on another. The structs Scalar, Avx2 and Avx512 at the end bundle each
// set under one interface, so a kernel is written once as a template and instantiated per path.
// Belcak & Wattenhofer 2023 (UltraFastBERT), arXiv:2311.10770, for what the kernels compute.
#pragma once

#include <cmath>
#include <cstdint>
#include <immintrin.h>

namespace ufkit {

inline bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

// F for the arithmetic; BW, VL and DQ because the target attribute lets the compiler use them. Every AVX-512
// CPU since Skylake-SP (and AMD Zen 4) has all four; libgcc also checks that the OS saves the zmm state.
inline bool cpu_has_avx512() {
  static const bool ok = cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return ok;
}

// Exact GELU, the erf form (as torch.nn.functional.gelu with approximate="none").
inline float gelu(float z) { return 0.5f * z * (1.0f + std::erf(z * 0.70710678118654752440f)); }

// ---- plain C++ -------------------------------------------------------------------------------------

inline float dot_scalar(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y[h] = sum_j act[j] * rows[node[j] * ld + h] for h < n (with accumulate: y[h] += ...)
inline void weighted_rows_scalar(const float* act, const int32_t* node, int m, const float* rows, int64_t ld,
                                 int64_t n, float* y, bool accumulate = false) {
  if (!accumulate)
    for (int64_t h = 0; h < n; ++h) y[h] = 0.f;
  for (int j = 0; j < m; ++j) {
    const float a = act[j];
    const float* r = rows + (int64_t)node[j] * ld;
    for (int64_t h = 0; h < n; ++h) y[h] += a * r[h];
  }
}

// ---- AVX2 + FMA ------------------------------------------------------------------------------------

#define UFKIT_AVX2 __attribute__((target("avx2,fma")))

UFKIT_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One dot product; 4 accumulators hide the FMA latency (2 loads per FMA: bound by load ports).
UFKIT_AVX2 inline float dot_avx2(const float* x, const float* w, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(w + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(w + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(w + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(w + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(w + i), a0);
  float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) s += x[i] * w[i];  // odd H: scalar tail
  return s;
}

// Four tokens that sit at the same node: the weight row is loaded once for all four (5 loads per 4 FMAs
// instead of 8), which is what grouping tokens by node buys at the top levels of a tree.
UFKIT_AVX2 inline void dot4_avx2(const float* x0, const float* x1, const float* x2, const float* x3,
                                 const float* w, int64_t n, float* out) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 w0 = _mm256_loadu_ps(w + i), w1 = _mm256_loadu_ps(w + i + 8);
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i), w0, a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i), w0, a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x2 + i), w0, a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x3 + i), w0, a3);
    b0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i + 8), w1, b0);
    b1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i + 8), w1, b1);
    b2 = _mm256_fmadd_ps(_mm256_loadu_ps(x2 + i + 8), w1, b2);
    b3 = _mm256_fmadd_ps(_mm256_loadu_ps(x3 + i + 8), w1, b3);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 w0 = _mm256_loadu_ps(w + i);
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i), w0, a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i), w0, a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x2 + i), w0, a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x3 + i), w0, a3);
  }
  float s0 = hsum8(_mm256_add_ps(a0, b0)), s1 = hsum8(_mm256_add_ps(a1, b1));
  float s2 = hsum8(_mm256_add_ps(a2, b2)), s3 = hsum8(_mm256_add_ps(a3, b3));
  for (; i < n; ++i) {
    s0 += x0[i] * w[i];
    s1 += x1[i] * w[i];
    s2 += x2[i] * w[i];
    s3 += x3[i] * w[i];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

// y = sum_j act[j] * rows[node[j]]: y stays in 8 registers (64 floats) while all m rows stream past,
// so y is written once instead of read and written m times.
// With accumulate, y += ... instead (used when several trees add into one output row). With stream (and y
// 32-byte aligned), y is written with non-temporal stores: no read-for-ownership of a row never read again;
// the caller issues _mm_sfence() before the data is used.
UFKIT_AVX2 inline void weighted_rows_avx2(const float* act, const int32_t* node, int m, const float* rows,
                                          int64_t ld, int64_t n, float* y, bool accumulate = false,
                                          bool stream = false) {
  stream = stream && !accumulate && (reinterpret_cast<uintptr_t>(y) % 32 == 0);
  int64_t h = 0;
  for (; h + 64 <= n; h += 64) {
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps(), c2 = _mm256_setzero_ps(), c3 = _mm256_setzero_ps();
    __m256 c4 = _mm256_setzero_ps(), c5 = _mm256_setzero_ps(), c6 = _mm256_setzero_ps(), c7 = _mm256_setzero_ps();
    if (accumulate) {
      c0 = _mm256_loadu_ps(y + h);
      c1 = _mm256_loadu_ps(y + h + 8);
      c2 = _mm256_loadu_ps(y + h + 16);
      c3 = _mm256_loadu_ps(y + h + 24);
      c4 = _mm256_loadu_ps(y + h + 32);
      c5 = _mm256_loadu_ps(y + h + 40);
      c6 = _mm256_loadu_ps(y + h + 48);
      c7 = _mm256_loadu_ps(y + h + 56);
    }
    for (int j = 0; j < m; ++j) {
      const __m256 a = _mm256_set1_ps(act[j]);
      const float* r = rows + (int64_t)node[j] * ld + h;
      c0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(r), c0);
      c1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(r + 8), c1);
      c2 = _mm256_fmadd_ps(a, _mm256_loadu_ps(r + 16), c2);
      c3 = _mm256_fmadd_ps(a, _mm256_loadu_ps(r + 24), c3);
      c4 = _mm256_fmadd_ps(a, _mm256_loadu_ps(r + 32), c4);
      c5 = _mm256_fmadd_ps(a, _mm256_loadu_ps(r + 40), c5);
      c6 = _mm256_fmadd_ps(a, _mm256_loadu_ps(r + 48), c6);
      c7 = _mm256_fmadd_ps(a, _mm256_loadu_ps(r + 56), c7);
    }
    if (stream) {
      _mm256_stream_ps(y + h, c0);
      _mm256_stream_ps(y + h + 8, c1);
      _mm256_stream_ps(y + h + 16, c2);
      _mm256_stream_ps(y + h + 24, c3);
      _mm256_stream_ps(y + h + 32, c4);
      _mm256_stream_ps(y + h + 40, c5);
      _mm256_stream_ps(y + h + 48, c6);
      _mm256_stream_ps(y + h + 56, c7);
    } else {
      _mm256_storeu_ps(y + h, c0);
      _mm256_storeu_ps(y + h + 8, c1);
      _mm256_storeu_ps(y + h + 16, c2);
      _mm256_storeu_ps(y + h + 24, c3);
      _mm256_storeu_ps(y + h + 32, c4);
      _mm256_storeu_ps(y + h + 40, c5);
      _mm256_storeu_ps(y + h + 48, c6);
      _mm256_storeu_ps(y + h + 56, c7);
    }
  }
  for (; h + 8 <= n; h += 8) {
    __m256 c0 = accumulate ? _mm256_loadu_ps(y + h) : _mm256_setzero_ps();
    for (int j = 0; j < m; ++j)
      c0 = _mm256_fmadd_ps(_mm256_set1_ps(act[j]), _mm256_loadu_ps(rows + (int64_t)node[j] * ld + h), c0);
    _mm256_storeu_ps(y + h, c0);
  }
  for (; h < n; ++h) {
    float s = accumulate ? y[h] : 0.f;
    for (int j = 0; j < m; ++j) s += act[j] * rows[(int64_t)node[j] * ld + h];
    y[h] = s;
  }
}

// ---- AVX-512 (F, BW, VL, DQ) -------------------------------------------------------------------------
// The same routines on 16-float zmm registers. Besides twice the width per instruction (a full win on Intel
// cores with two 512-bit FMA units, fewer instructions per byte on Zen 4, which splits them), odd tails are
// one masked load instead of a scalar loop: masked-off lanes are neither read nor faulted on.

#define UFKIT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

// Lanes [0, r) of a 16-lane mask, r in [0, 16].
UFKIT_AVX512 inline __mmask16 tail_mask(int64_t r) { return (__mmask16)((1u << r) - 1u); }

UFKIT_AVX512 inline float dot_avx512(const float* x, const float* w, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {  // H = 768: 12 iterations, no tail
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(w + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(w + i + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(w + i + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(w + i + 48), a3);
  }
  for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(w + i), a0);
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, w + i), a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// Four tokens at one node, the row loaded once for all four (as dot4_avx2): 2 row loads feed 8 FMAs.
UFKIT_AVX512 inline void dot4_avx512(const float* x0, const float* x1, const float* x2, const float* x3,
                                     const float* w, int64_t n, float* out) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 w0 = _mm512_loadu_ps(w + i), w1 = _mm512_loadu_ps(w + i + 16);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x0 + i), w0, a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x1 + i), w0, a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x2 + i), w0, a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x3 + i), w0, a3);
    b0 = _mm512_fmadd_ps(_mm512_loadu_ps(x0 + i + 16), w1, b0);
    b1 = _mm512_fmadd_ps(_mm512_loadu_ps(x1 + i + 16), w1, b1);
    b2 = _mm512_fmadd_ps(_mm512_loadu_ps(x2 + i + 16), w1, b2);
    b3 = _mm512_fmadd_ps(_mm512_loadu_ps(x3 + i + 16), w1, b3);
  }
  while (i < n) {  // at most two more steps: one full, one masked
    const __mmask16 k = tail_mask(n - i < 16 ? n - i : 16);
    const __m512 w0 = _mm512_maskz_loadu_ps(k, w + i);
    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, x0 + i), w0, a0);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, x1 + i), w0, a1);
    a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, x2 + i), w0, a2);
    a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, x3 + i), w0, a3);
    i += 16;
  }
  out[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, b0));
  out[1] = _mm512_reduce_add_ps(_mm512_add_ps(a1, b1));
  out[2] = _mm512_reduce_add_ps(_mm512_add_ps(a2, b2));
  out[3] = _mm512_reduce_add_ps(_mm512_add_ps(a3, b3));
}

// One strip of R*16 floats of y = (y +) sum_j act[j] * rows[node[j]][0 .. R*16), kept in R registers while
// the m rows stream past. With Tail, k masks the last register's lanes (the strip at the end of an odd H).
template <int R, bool Tail>
UFKIT_AVX512 inline void weighted_strip_avx512(const float* act, const int32_t* node, int m, const float* rows,
                                               int64_t ld, float* y, bool accumulate, bool stream, __mmask16 k) {
  __m512 c[R];
#pragma GCC unroll 8
  for (int u = 0; u < R; ++u) {
    const bool masked = Tail && u == R - 1;
    if (!accumulate) c[u] = _mm512_setzero_ps();
    else c[u] = masked ? _mm512_maskz_loadu_ps(k, y + 16 * u) : _mm512_loadu_ps(y + 16 * u);
  }
  for (int j = 0; j < m; ++j) {
    const __m512 a = _mm512_set1_ps(act[j]);
    const float* r = rows + (int64_t)node[j] * ld;
#pragma GCC unroll 8
    for (int u = 0; u < R; ++u) {
      const bool masked = Tail && u == R - 1;
      c[u] = _mm512_fmadd_ps(a, masked ? _mm512_maskz_loadu_ps(k, r + 16 * u) : _mm512_loadu_ps(r + 16 * u), c[u]);
    }
  }
#pragma GCC unroll 8
  for (int u = 0; u < R; ++u) {
    if (Tail && u == R - 1)
      _mm512_mask_storeu_ps(y + 16 * u, k, c[u]);
    else if (stream)
      _mm512_stream_ps(y + 16 * u, c[u]);
    else
      _mm512_storeu_ps(y + 16 * u, c[u]);
  }
}

// y = sum_j act[j] * rows[node[j]] in strips of 128 floats (8 zmm accumulators: H = 768 is 6 strips, half
// as many passes over the m rows as AVX2's 64-float strips); accumulate and stream as weighted_rows_avx2,
// streaming needing y 64-byte aligned (a row of a 2 MiB-aligned output at H = 768 is).
UFKIT_AVX512 inline void weighted_rows_avx512(const float* act, const int32_t* node, int m, const float* rows,
                                              int64_t ld, int64_t n, float* y, bool accumulate = false,
                                              bool stream = false) {
  stream = stream && !accumulate && (reinterpret_cast<uintptr_t>(y) % 64 == 0);
  int64_t h = 0;
  for (; h + 128 <= n; h += 128)
    weighted_strip_avx512<8, false>(act, node, m, rows + h, ld, y + h, accumulate, stream, 0);
  for (; h + 16 <= n; h += 16)
    weighted_strip_avx512<1, false>(act, node, m, rows + h, ld, y + h, accumulate, false, 0);
  if (h < n)
    weighted_strip_avx512<1, true>(act, node, m, rows + h, ld, y + h, accumulate, false, tail_mask(n - h));
}

// Ask for the first cache lines of a row that is needed soon; the hardware prefetcher follows the rest.
// One version for every path: prefetcht0 is baseline x86-64, and AVX-512 adds no prefetch for this pattern.
inline void prefetch_row(const float* p, int64_t n, int lines) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = n * 4;
  for (int k = 0; k < lines && k * 64 < bytes; ++k) __builtin_prefetch(c + k * 64, 0, 3);
}

// ---- one interface per path ------------------------------------------------------------------------
// A kernel templated on one of these calls Isa::dot, Isa::dot4 and Isa::rows; only the path the dispatcher
// picked (after the cpuid check) is ever called. The calls are not inlined into the generic caller (a
// target mismatch), which costs a few cycles against a 768-long dot product.

struct Scalar {
  static constexpr const char* name = "scalar";
  static float dot(const float* x, const float* w, int64_t n) { return dot_scalar(x, w, n); }
  static void dot4(const float* x0, const float* x1, const float* x2, const float* x3, const float* w, int64_t n,
                   float* out) {
    out[0] = dot_scalar(x0, w, n);
    out[1] = dot_scalar(x1, w, n);
    out[2] = dot_scalar(x2, w, n);
    out[3] = dot_scalar(x3, w, n);
  }
  static void rows(const float* act, const int32_t* node, int m, const float* rows, int64_t ld, int64_t n, float* y,
                   bool accumulate = false, bool /*stream*/ = false) {
    weighted_rows_scalar(act, node, m, rows, ld, n, y, accumulate);
  }
};

struct Avx2 {
  static constexpr const char* name = "avx2";
  static float dot(const float* x, const float* w, int64_t n) { return dot_avx2(x, w, n); }
  static void dot4(const float* x0, const float* x1, const float* x2, const float* x3, const float* w, int64_t n,
                   float* out) {
    dot4_avx2(x0, x1, x2, x3, w, n, out);
  }
  static void rows(const float* act, const int32_t* node, int m, const float* rows, int64_t ld, int64_t n, float* y,
                   bool accumulate = false, bool stream = false) {
    weighted_rows_avx2(act, node, m, rows, ld, n, y, accumulate, stream);
  }
};

struct Avx512 {
  static constexpr const char* name = "avx512";
  static float dot(const float* x, const float* w, int64_t n) { return dot_avx512(x, w, n); }
  static void dot4(const float* x0, const float* x1, const float* x2, const float* x3, const float* w, int64_t n,
                   float* out) {
    dot4_avx512(x0, x1, x2, x3, w, n, out);
  }
  static void rows(const float* act, const int32_t* node, int m, const float* rows, int64_t ld, int64_t n, float* y,
                   bool accumulate = false, bool stream = false) {
    weighted_rows_avx512(act, node, m, rows, ld, n, y, accumulate, stream);
  }
};

}  // namespace ufkit
