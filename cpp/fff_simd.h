// fff_simd.h: the small vector routines the CPU FFF kernels are made of (dot product, multi-token dot,
// weighted sum of rows, prefetch), three times: plain C++, AVX2+FMA and AVX-512, each for float32 and for
// bfloat16 storage (T = float or bf16; bf16 is widened to float32 on load, and sums are float32), plus dot
// products on AVX512_BF16's vdpbf16ps. Shared by fff_native.cpp and fff_mkl.cpp.
//
// One build runs on any x86-64: the file compiles with the default flags, the AVX2 and AVX-512 versions carry
// __attribute__((target)) and are only called after a cpuid check (the dispatcher in fff_native.cpp); a build
// cached on one machine stays safe on another. The structs Scalar, Avx2, Avx512 and Avx512Bf16 at the end
// bundle each set under one interface, so a kernel is written once as a template and instantiated per path.
// Belcak & Wattenhofer 2023 (UltraFastBERT), arXiv:2311.10770, for what the kernels compute.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>

namespace ufkit {

inline bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

// Exact GELU, the erf form (as torch.nn.functional.gelu with approximate="none").
inline float gelu(float z) { return 0.5f * z * (1.0f + std::erf(z * 0.70710678118654752440f)); }

// bfloat16 is the top half of a float32: widening is an exact 16-bit shift.
using bf16 = uint16_t;

inline float to_f32(float v) { return v; }
inline float to_f32(bf16 v) {
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// float32 -> bfloat16, rounding to nearest even, as torch's .bfloat16() (NaN stays a quiet NaN).
inline bf16 to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16((u >> 16) | 0x40);
  return bf16((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// ---- plain C++ -------------------------------------------------------------------------------------

template <class T>
inline float dot_scalar(const T* a, const T* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += to_f32(a[i]) * to_f32(b[i]);
  return s;
}

// y[h] = sum_j act[j] * rows[node[j] * ld + h] for h < n (with accumulate: y[h] += ...)
template <class T>
inline void weighted_rows_scalar(const float* act, const int32_t* node, int m, const T* rows, int64_t ld,
                                 int64_t n, float* y, bool accumulate = false) {
  if (!accumulate)
    for (int64_t h = 0; h < n; ++h) y[h] = 0.f;
  for (int j = 0; j < m; ++j) {
    const float a = act[j];
    const T* r = rows + (int64_t)node[j] * ld;
    for (int64_t h = 0; h < n; ++h) y[h] += a * to_f32(r[h]);
  }
}

// ---- AVX2 + FMA ------------------------------------------------------------------------------------

#define UFKIT_AVX2 __attribute__((target("avx2,fma")))

// 8 floats from float32 or bfloat16 storage.
UFKIT_AVX2 inline __m256 ld8(const float* p) { return _mm256_loadu_ps(p); }
UFKIT_AVX2 inline __m256 ld8(const bf16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

UFKIT_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One dot product; 4 accumulators hide the FMA latency (2 loads per FMA: bound by load ports).
template <class T>
UFKIT_AVX2 inline float dot_avx2(const T* x, const T* w, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(ld8(x + i), ld8(w + i), a0);
    a1 = _mm256_fmadd_ps(ld8(x + i + 8), ld8(w + i + 8), a1);
    a2 = _mm256_fmadd_ps(ld8(x + i + 16), ld8(w + i + 16), a2);
    a3 = _mm256_fmadd_ps(ld8(x + i + 24), ld8(w + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(ld8(x + i), ld8(w + i), a0);
  float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) s += to_f32(x[i]) * to_f32(w[i]);  // odd H: scalar tail
  return s;
}

// Four tokens that sit at the same node: the weight row is loaded once for all four (5 loads per 4 FMAs
// instead of 8), which is what grouping tokens by node buys at the top levels of a tree.
template <class T>
UFKIT_AVX2 inline void dot4_avx2(const T* x0, const T* x1, const T* x2, const T* x3, const T* w, int64_t n,
                                 float* out) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 w0 = ld8(w + i), w1 = ld8(w + i + 8);
    a0 = _mm256_fmadd_ps(ld8(x0 + i), w0, a0);
    a1 = _mm256_fmadd_ps(ld8(x1 + i), w0, a1);
    a2 = _mm256_fmadd_ps(ld8(x2 + i), w0, a2);
    a3 = _mm256_fmadd_ps(ld8(x3 + i), w0, a3);
    b0 = _mm256_fmadd_ps(ld8(x0 + i + 8), w1, b0);
    b1 = _mm256_fmadd_ps(ld8(x1 + i + 8), w1, b1);
    b2 = _mm256_fmadd_ps(ld8(x2 + i + 8), w1, b2);
    b3 = _mm256_fmadd_ps(ld8(x3 + i + 8), w1, b3);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 w0 = ld8(w + i);
    a0 = _mm256_fmadd_ps(ld8(x0 + i), w0, a0);
    a1 = _mm256_fmadd_ps(ld8(x1 + i), w0, a1);
    a2 = _mm256_fmadd_ps(ld8(x2 + i), w0, a2);
    a3 = _mm256_fmadd_ps(ld8(x3 + i), w0, a3);
  }
  float s0 = hsum8(_mm256_add_ps(a0, b0)), s1 = hsum8(_mm256_add_ps(a1, b1));
  float s2 = hsum8(_mm256_add_ps(a2, b2)), s3 = hsum8(_mm256_add_ps(a3, b3));
  for (; i < n; ++i) {
    const float wi = to_f32(w[i]);
    s0 += to_f32(x0[i]) * wi;
    s1 += to_f32(x1[i]) * wi;
    s2 += to_f32(x2[i]) * wi;
    s3 += to_f32(x3[i]) * wi;
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
template <class T>
UFKIT_AVX2 inline void weighted_rows_avx2(const float* act, const int32_t* node, int m, const T* rows,
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
      const T* r = rows + (int64_t)node[j] * ld + h;
      c0 = _mm256_fmadd_ps(a, ld8(r), c0);
      c1 = _mm256_fmadd_ps(a, ld8(r + 8), c1);
      c2 = _mm256_fmadd_ps(a, ld8(r + 16), c2);
      c3 = _mm256_fmadd_ps(a, ld8(r + 24), c3);
      c4 = _mm256_fmadd_ps(a, ld8(r + 32), c4);
      c5 = _mm256_fmadd_ps(a, ld8(r + 40), c5);
      c6 = _mm256_fmadd_ps(a, ld8(r + 48), c6);
      c7 = _mm256_fmadd_ps(a, ld8(r + 56), c7);
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
      c0 = _mm256_fmadd_ps(_mm256_set1_ps(act[j]), ld8(rows + (int64_t)node[j] * ld + h), c0);
    _mm256_storeu_ps(y + h, c0);
  }
  for (; h < n; ++h) {
    float s = accumulate ? y[h] : 0.f;
    for (int j = 0; j < m; ++j) s += act[j] * to_f32(rows[(int64_t)node[j] * ld + h]);
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

// 16 floats from float32 or bfloat16 storage; with a mask, the other lanes are 0 and not read.
UFKIT_AVX512 inline __m512 ld16(const float* p) { return _mm512_loadu_ps(p); }
UFKIT_AVX512 inline __m512 ld16(const bf16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
UFKIT_AVX512 inline __m512 ld16(__mmask16 k, const float* p) { return _mm512_maskz_loadu_ps(k, p); }
UFKIT_AVX512 inline __m512 ld16(__mmask16 k, const bf16* p) {
  const __m256i h = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <class T>
UFKIT_AVX512 inline float dot_avx512(const T* x, const T* w, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {  // H = 768: 12 iterations, no tail
    a0 = _mm512_fmadd_ps(ld16(x + i), ld16(w + i), a0);
    a1 = _mm512_fmadd_ps(ld16(x + i + 16), ld16(w + i + 16), a1);
    a2 = _mm512_fmadd_ps(ld16(x + i + 32), ld16(w + i + 32), a2);
    a3 = _mm512_fmadd_ps(ld16(x + i + 48), ld16(w + i + 48), a3);
  }
  for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(ld16(x + i), ld16(w + i), a0);
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    a1 = _mm512_fmadd_ps(ld16(k, x + i), ld16(k, w + i), a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// Four tokens at one node, the row loaded once for all four (as dot4_avx2): 2 row loads feed 8 FMAs.
template <class T>
UFKIT_AVX512 inline void dot4_avx512(const T* x0, const T* x1, const T* x2, const T* x3, const T* w, int64_t n,
                                     float* out) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 w0 = ld16(w + i), w1 = ld16(w + i + 16);
    a0 = _mm512_fmadd_ps(ld16(x0 + i), w0, a0);
    a1 = _mm512_fmadd_ps(ld16(x1 + i), w0, a1);
    a2 = _mm512_fmadd_ps(ld16(x2 + i), w0, a2);
    a3 = _mm512_fmadd_ps(ld16(x3 + i), w0, a3);
    b0 = _mm512_fmadd_ps(ld16(x0 + i + 16), w1, b0);
    b1 = _mm512_fmadd_ps(ld16(x1 + i + 16), w1, b1);
    b2 = _mm512_fmadd_ps(ld16(x2 + i + 16), w1, b2);
    b3 = _mm512_fmadd_ps(ld16(x3 + i + 16), w1, b3);
  }
  while (i < n) {  // at most two more steps: one full, one masked
    const __mmask16 k = tail_mask(n - i < 16 ? n - i : 16);
    const __m512 w0 = ld16(k, w + i);
    a0 = _mm512_fmadd_ps(ld16(k, x0 + i), w0, a0);
    a1 = _mm512_fmadd_ps(ld16(k, x1 + i), w0, a1);
    a2 = _mm512_fmadd_ps(ld16(k, x2 + i), w0, a2);
    a3 = _mm512_fmadd_ps(ld16(k, x3 + i), w0, a3);
    i += 16;
  }
  out[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, b0));
  out[1] = _mm512_reduce_add_ps(_mm512_add_ps(a1, b1));
  out[2] = _mm512_reduce_add_ps(_mm512_add_ps(a2, b2));
  out[3] = _mm512_reduce_add_ps(_mm512_add_ps(a3, b3));
}

// One strip of R*16 floats of y = (y +) sum_j act[j] * rows[node[j]][0 .. R*16), kept in R registers while
// the m rows stream past. With Tail, k masks the last register's lanes (the strip at the end of an odd H).
template <int R, bool Tail, class T>
UFKIT_AVX512 inline void weighted_strip_avx512(const float* act, const int32_t* node, int m, const T* rows,
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
    const T* r = rows + (int64_t)node[j] * ld;
#pragma GCC unroll 8
    for (int u = 0; u < R; ++u) {
      const bool masked = Tail && u == R - 1;
      c[u] = _mm512_fmadd_ps(a, masked ? ld16(k, r + 16 * u) : ld16(r + 16 * u), c[u]);
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
template <class T>
UFKIT_AVX512 inline void weighted_rows_avx512(const float* act, const int32_t* node, int m, const T* rows,
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

// ---- AVX512_BF16: dot products of bfloat16 pairs ------------------------------------------------------
// vdpbf16ps multiplies 32 bf16 pairs (exact in float32) and adds them two by two into 16 float32 sums: one
// instruction per 64 bytes of a weight row, half the bytes of the float32 row, and no widening. Only the
// dot products use it; the output sum widens its bf16 rows (ld16) since its coefficients stay float32.

#define UFKIT_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))

UFKIT_AVX512BF16 inline __m512bh ld32bh(const bf16* p) { return (__m512bh)_mm512_loadu_si512(p); }
// Elements [0, r) of 32, r in [0, 32]; the rest are +0, which adds nothing.
UFKIT_AVX512BF16 inline __m512bh ld32bh(const bf16* p, int64_t r) {
  const __mmask32 k = r >= 32 ? ~__mmask32(0) : (__mmask32)((1u << r) - 1u);
  return (__m512bh)_mm512_maskz_loadu_epi16(k, p);
}

UFKIT_AVX512BF16 inline float dot_avx512bf16(const bf16* x, const bf16* w, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 128 <= n; i += 128) {  // H = 768: 6 iterations
    a0 = _mm512_dpbf16_ps(a0, ld32bh(x + i), ld32bh(w + i));
    a1 = _mm512_dpbf16_ps(a1, ld32bh(x + i + 32), ld32bh(w + i + 32));
    a2 = _mm512_dpbf16_ps(a2, ld32bh(x + i + 64), ld32bh(w + i + 64));
    a3 = _mm512_dpbf16_ps(a3, ld32bh(x + i + 96), ld32bh(w + i + 96));
  }
  for (; i < n; i += 32) a0 = _mm512_dpbf16_ps(a0, ld32bh(x + i, n - i), ld32bh(w + i, n - i));
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

UFKIT_AVX512BF16 inline void dot4_avx512bf16(const bf16* x0, const bf16* x1, const bf16* x2, const bf16* x3,
                                             const bf16* w, int64_t n, float* out) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512bh w0 = ld32bh(w + i), w1 = ld32bh(w + i + 32);
    a0 = _mm512_dpbf16_ps(a0, ld32bh(x0 + i), w0);
    a1 = _mm512_dpbf16_ps(a1, ld32bh(x1 + i), w0);
    a2 = _mm512_dpbf16_ps(a2, ld32bh(x2 + i), w0);
    a3 = _mm512_dpbf16_ps(a3, ld32bh(x3 + i), w0);
    b0 = _mm512_dpbf16_ps(b0, ld32bh(x0 + i + 32), w1);
    b1 = _mm512_dpbf16_ps(b1, ld32bh(x1 + i + 32), w1);
    b2 = _mm512_dpbf16_ps(b2, ld32bh(x2 + i + 32), w1);
    b3 = _mm512_dpbf16_ps(b3, ld32bh(x3 + i + 32), w1);
  }
  for (; i < n; i += 32) {  // at most two more steps, the last one masked
    const int64_t r = n - i;
    const __m512bh w0 = ld32bh(w + i, r);
    a0 = _mm512_dpbf16_ps(a0, ld32bh(x0 + i, r), w0);
    a1 = _mm512_dpbf16_ps(a1, ld32bh(x1 + i, r), w0);
    a2 = _mm512_dpbf16_ps(a2, ld32bh(x2 + i, r), w0);
    a3 = _mm512_dpbf16_ps(a3, ld32bh(x3 + i, r), w0);
  }
  out[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, b0));
  out[1] = _mm512_reduce_add_ps(_mm512_add_ps(a1, b1));
  out[2] = _mm512_reduce_add_ps(_mm512_add_ps(a2, b2));
  out[3] = _mm512_reduce_add_ps(_mm512_add_ps(a3, b3));
}

// Ask for the first cache lines of a row that is needed soon; the hardware prefetcher follows the rest.
// One version for every path: prefetcht0 is baseline x86-64, and AVX-512 adds no prefetch for this pattern.
template <class T>
inline void prefetch_row(const T* p, int64_t n, int lines) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = n * int64_t(sizeof(T));
  for (int k = 0; k < lines && k * 64 < bytes; ++k) __builtin_prefetch(c + k * 64, 0, 3);
}

// ---- one interface per path ------------------------------------------------------------------------
// A kernel templated on one of these calls Isa::dot, Isa::dot4 and Isa::rows, with T = float (float32
// weights) or bf16 (bfloat16 weights and x); only the path the dispatcher picked (after the cpuid check) is
// ever called. The calls are not inlined into the generic caller (a target mismatch), which costs a few
// cycles against a 768-long dot product.

struct Scalar {
  template <class T>
  static float dot(const T* x, const T* w, int64_t n) {
    return dot_scalar(x, w, n);
  }
  template <class T>
  static void dot4(const T* x0, const T* x1, const T* x2, const T* x3, const T* w, int64_t n, float* out) {
    out[0] = dot_scalar(x0, w, n);
    out[1] = dot_scalar(x1, w, n);
    out[2] = dot_scalar(x2, w, n);
    out[3] = dot_scalar(x3, w, n);
  }
  template <class T>
  static void rows(const float* act, const int32_t* node, int m, const T* rows, int64_t ld, int64_t n, float* y,
                   bool accumulate = false, bool /*stream*/ = false) {
    weighted_rows_scalar(act, node, m, rows, ld, n, y, accumulate);
  }
};

struct Avx2 {
  template <class T>
  static float dot(const T* x, const T* w, int64_t n) {
    return dot_avx2(x, w, n);
  }
  template <class T>
  static void dot4(const T* x0, const T* x1, const T* x2, const T* x3, const T* w, int64_t n, float* out) {
    dot4_avx2(x0, x1, x2, x3, w, n, out);
  }
  template <class T>
  static void rows(const float* act, const int32_t* node, int m, const T* rows, int64_t ld, int64_t n, float* y,
                   bool accumulate = false, bool stream = false) {
    weighted_rows_avx2(act, node, m, rows, ld, n, y, accumulate, stream);
  }
};

struct Avx512 {
  template <class T>
  static float dot(const T* x, const T* w, int64_t n) {
    return dot_avx512(x, w, n);
  }
  template <class T>
  static void dot4(const T* x0, const T* x1, const T* x2, const T* x3, const T* w, int64_t n, float* out) {
    dot4_avx512(x0, x1, x2, x3, w, n, out);
  }
  template <class T>
  static void rows(const float* act, const int32_t* node, int m, const T* rows, int64_t ld, int64_t n, float* y,
                   bool accumulate = false, bool stream = false) {
    weighted_rows_avx512(act, node, m, rows, ld, n, y, accumulate, stream);
  }
};

// bfloat16 weights only: vdpbf16ps dot products, the AVX-512 output sum.
struct Avx512Bf16 {
  static float dot(const bf16* x, const bf16* w, int64_t n) { return dot_avx512bf16(x, w, n); }
  static void dot4(const bf16* x0, const bf16* x1, const bf16* x2, const bf16* x3, const bf16* w, int64_t n,
                   float* out) {
    dot4_avx512bf16(x0, x1, x2, x3, w, n, out);
  }
  static void rows(const float* act, const int32_t* node, int m, const bf16* rows, int64_t ld, int64_t n, float* y,
                   bool accumulate = false, bool stream = false) {
    weighted_rows_avx512(act, node, m, rows, ld, n, y, accumulate, stream);
  }
};

}  // namespace ufkit
