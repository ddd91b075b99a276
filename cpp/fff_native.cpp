// fff_native.cpp: UltraFastBERT fast feedforward, inference form, fused C++ kernels (ATen + OpenMP).
// Belcak & Wattenhofer 2023, arXiv:2311.10770. Python entry: ufkit.kernels.fff_forward(backend="native").
//
// Shapes: x is (B, H_in), w_in is (K*N, H_in), b_in is (K*N), wt_out is (K*N, H_out) (= w_out transposed,
// prepacked once so that a node's output weights are one contiguous row), y is (B, H_out); N = 2^(D+1) - 1,
// tree t's node i is row t*N + i, children of i are 2i+1 and 2i+2, go right iff z > 0.
// Napkin math per token, 1x11 at H = 768: 12 dots + 12 axpys = 4 * 12 * 768 = 36.9 kFLOP, and at most
// 24 weight rows * 3 KiB = 72 KiB of weights: 0.5 FLOP per byte. Both matrices together are 25 MB, more
// than a small machine's L3 keeps; the top levels are shared by many tokens and stay in L1/L2, the bottom
// ones come from memory unless tokens share them. Dense I = 4095 does 12.6 MFLOP per token: 341x more.
// So at 16k tokens the floor is memory, ~150 MB (x twice, y once, weights once) at ~15 GB/s per core.
//
// Versions, each faster than the last (all compute the same function):
//   v1  per token, plain C++ loops: the baseline "native fused" kernel.
//   v2  per token, SIMD dot products; the output sum keeps y in registers while the rows stream past.
//   v3  blocks of tokens, level by level: within a block, tokens are grouped by node so one weight row is
//       loaded for up to four tokens, and the next token's row is prefetched while this one is computed.
//   v4  deep trees: route the top levels in blocks (v3), bucket the tokens by the subtree they enter, then
//       finish each bucket's tokens while that subtree's rows sit in L2; the weights stream from memory
//       about once per call instead of once per token. Version 0 (the default) picks v4 for one or two deep
//       trees and batches of at least 16 tokens per subtree, else v3.
//
// CPU paths: v2-v4 are templates over the vector routines of fff_simd.h (Scalar, Avx2, Avx512, and for bf16
// weights Avx512Bf16), instantiated for each; a path runs only after a cpuid check (pick_isa), so one build is
// safe on any x86-64 and uses AVX-512 where the CPU has it. v1 is always the plain loop. "auto" picks the
// widest path the CPU supports; Python forces one with fff_forward(isa=...) or UFKIT_FFF_ISA
// (ufkit.fff.kernels.cpu_path).
//
// bfloat16 weights (w_in and wt_out bf16, x and y float32): x is rounded to a bf16 copy once per call, the dot
// products multiply bf16 pairs and sum in float32 (vdpbf16ps on avx512_bf16; widened to float32 elsewhere),
// and the output sums widened bf16 rows with float32 GELU values. A 1x11 token then needs 36 KiB of weight
// rows instead of 72 KiB and both matrices take 12.6 MB instead of 25 MB: at most 2x for the batches bound by
// weight traffic, little for large ones (bound by x and y, 6 KiB per token, which stay float32).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "fff_checks.h"
#include "fff_simd.h"

namespace {

using ufkit::gelu;

// T is the storage of x and the weights: float, or bf16 (bfloat16 weights; x then is a bf16 copy).
template <class T>
struct Args {
  const T* x;
  const T* w_in;
  const float* b_in;
  const T* wt;
  float* y;
  int32_t* route;  // (B, K*(D+1)) visited rows, or nullptr
  int64_t B, H_in, H_out;
  int depth, n_trees;
  int64_t N;
  int L;  // nodes used per token, K*(D+1)
};

// v1 / v2: one token at a time with one path's routines (v1 is per_token<Scalar>).
template <class Isa, class T>
void per_token(const Args<T>& a, int64_t t0, int64_t t1) {
  std::vector<int32_t> node(a.L);
  std::vector<float> act(a.L);
  for (int64_t t = t0; t < t1; ++t) {
    const T* xt = a.x + t * a.H_in;
    int j = 0;
    for (int k = 0; k < a.n_trees; ++k) {
      int64_t n = 0;
      for (int l = 0; l <= a.depth; ++l, ++j) {
        const int64_t row = k * a.N + n;
        const T* w = a.w_in + row * a.H_in;
        const float z = a.b_in[row] + Isa::dot(xt, w, a.H_in);
        node[j] = (int32_t)row;
        act[j] = gelu(z);
        n = 2 * n + 1 + (z > 0.f);
      }
    }
    float* yt = a.y + t * a.H_out;
    Isa::rows(act.data(), node.data(), a.L, a.wt, a.H_out, a.H_out, yt);
    if (a.route) std::copy(node.begin(), node.end(), a.route + t * a.L);
  }
}

constexpr int64_t kBlock = 64;   // v3 / pass 1: tokens per block; x and y of a block sit in L2
constexpr int64_t kChunk = 64;  // pass 2: tokens of one subtree routed together (192 KiB of x rows, in L2)
// Cache lines of each weight row prefetched ahead: routing (v3 and pass 1) asks for all of a level's rows
// up front; the output sum asks for the next token's rows. Tunable through set_tuning().
int g_route_prefetch = 16, g_out_prefetch = 4;

// Scratch that lives across calls (per calling thread): fresh vectors would page-fault megabytes each call.
template <class T>
T* scratch(std::vector<T>& v, int64_t n) {
  if ((int64_t)v.size() < n) v.resize(n);
  return v.data();
}

// Route the n tokens ids[0..n) through levels [l0, l1) of tree k, level by level. cur[t] is token t's node
// within the tree (in/out); node/act receive the visited rows and GELU(z) at [t * L + j]; n <= 64. At each
// level the tokens are in node order, so a run of tokens at one node shares its weight row: four at a time
// take a dot product with one load of the row (dot4), and the next run's row is prefetched meanwhile.
template <class Isa, class T>
void route_group(const Args<T>& a, const int32_t* ids, int64_t n, int k, int l0, int l1, int64_t* cur, int32_t* node,
                 float* act, int32_t* order, int prefetch_lines = 16) {
  int32_t next[kChunk > kBlock ? kChunk : kBlock];
  std::copy(ids, ids + n, order);
  if (l0 > 0) std::sort(order, order + n, [&](int32_t p, int32_t q) { return cur[p] < cur[q]; });
  for (int l = l0; l < l1; ++l) {
    const int j = k * (a.depth + 1) + l;
    int64_t i = 0, n_next = 0;
    if (prefetch_lines > 16) {  // ask for all of this level's rows at once: many misses in flight
      for (int64_t q = 0; q < n; ++q)
        if (q == 0 || cur[order[q]] != cur[order[q - 1]])
          ufkit::prefetch_row(a.w_in + (k * a.N + cur[order[q]]) * a.H_in, a.H_in, prefetch_lines);
    }
    while (i < n) {
      const int64_t row = k * a.N + cur[order[i]];
      const T* w = a.w_in + row * a.H_in;
      int64_t e = i + 1;
      while (e < n && cur[order[e]] == cur[order[i]]) ++e;
      if (e < n) ufkit::prefetch_row(a.w_in + (k * a.N + cur[order[e]]) * a.H_in, a.H_in, 16);
      const int64_t run = i;
      float z4[4];
      while (i < e) {
        int m = 1;
        const int32_t* o = order + i;
        if (e - i >= 4) {
          Isa::dot4(a.x + o[0] * a.H_in, a.x + o[1] * a.H_in, a.x + o[2] * a.H_in, a.x + o[3] * a.H_in, w,
                    a.H_in, z4);
          m = 4;
        } else {
          z4[0] = Isa::dot(a.x + o[0] * a.H_in, w, a.H_in);
        }
        for (int q = 0; q < m; ++q, ++i) {
          const int64_t t = order[i];
          const float z = a.b_in[row] + z4[q];
          node[t * a.L + j] = (int32_t)row;
          act[t * a.L + j] = gelu(z);
          cur[t] = 2 * cur[t] + 1 + (z > 0.f);
        }
      }
      // The run's tokens, left children first: runs come in node order, so the next level stays sorted
      // without a sort.
      for (int64_t q = run; q < e; ++q)
        if ((cur[order[q]] & 1) == 1) next[n_next++] = order[q];
      for (int64_t q = run; q < e; ++q)
        if ((cur[order[q]] & 1) == 0) next[n_next++] = order[q];
    }
    std::copy(next, next + n, order);
  }
}

// v3: a block of tokens walks all trees level by level, then each token sums its output rows.
template <class Isa, class T>
void blocked(const Args<T>& a, int64_t t0, int64_t t1, int64_t* cur, int32_t* node, float* act) {
  int32_t ids[kBlock], order[kBlock];
  for (int64_t b0 = t0; b0 < t1; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, t1 - b0);
    for (int64_t i = 0; i < nb; ++i) ids[i] = int32_t(b0 + i);
    for (int k = 0; k < a.n_trees; ++k) {
      std::fill(cur + b0, cur + b0 + nb, 0);
      route_group<Isa>(a, ids, nb, k, 0, a.depth + 1, cur, node, act, order, g_route_prefetch);
    }
    for (int64_t t = b0; t < b0 + nb; ++t) {
      if (t + 1 < b0 + nb)  // the next token's rows: start them on their way now
        for (int j = 0; j < a.L; ++j)
          ufkit::prefetch_row(a.wt + (int64_t)node[(t + 1) * a.L + j] * a.H_out, a.H_out, g_out_prefetch);
      Isa::rows(&act[t * a.L], &node[t * a.L], a.L, a.wt, a.H_out, a.H_out, a.y + t * a.H_out);
    }
  }
}

// v4, for deep trees: two passes per tree, so every weight row comes from memory about once per call.
//   pass 1: blocks of tokens route through the top S levels (2^S - 1 nodes: their rows stay in cache);
//   sort:   tokens are bucketed by the subtree they entered at level S (a counting sort);
//   pass 2: bucket by bucket, up to 64 tokens at a time walk their subtree together (its rows sit in L2
//           while they do, and tokens at one node share its row), then each sums its output rows with y in
//           registers, streaming y to memory (single tree) since it is never read back.
// Memory per call is then about x twice + y once + the weights once, instead of 72 KiB of rows per token.
// Subtree depth of pass 2: 2^(s+1) - 1 nodes * (H_in + H_out) * 4 B must sit in L2 beside the top
// levels' output rows: s = 4 is 31 nodes, 186 KiB at H = 768 (Zen 3 has 512 KiB of L2 per core).
int g_sub_depth = 4;

template <class Isa, class T>
void two_pass(const Args<T>& a, int64_t* cur, int32_t* node, float* act) {
  const int S = a.depth - g_sub_depth;  // levels of pass 1; >= 1 here
  const int64_t B = a.B, n_sub = int64_t(1) << S;
  thread_local std::vector<int32_t> perm_v, count_v;
  int32_t* perm = scratch(perm_v, B);
  int32_t* bucket_end = scratch(count_v, n_sub + 1);
  for (int k = 0; k < a.n_trees; ++k) {
    at::parallel_for(0, (B + kBlock - 1) / kBlock, 1, [&](int64_t g0, int64_t g1) {
      int32_t ids[kBlock], order[kBlock];
      for (int64_t b0 = g0 * kBlock; b0 < std::min(B, g1 * kBlock); b0 += kBlock) {
        const int64_t nb = std::min(kBlock, B - b0);
        for (int64_t i = 0; i < nb; ++i) ids[i] = int32_t(b0 + i);
        std::fill(cur + b0, cur + b0 + nb, 0);
        route_group<Isa>(a, ids, nb, k, 0, S, cur, node, act, order, g_route_prefetch);
      }
    });
    // Counting sort by subtree (cur[t] - (2^S - 1) is its index within level S); afterwards
    // bucket_end[s] is one past the last position of subtree s in perm.
    std::fill(bucket_end, bucket_end + n_sub + 1, 0);
    for (int64_t t = 0; t < B; ++t) ++bucket_end[cur[t] - (n_sub - 1) + 1];
    for (int64_t s = 0; s < n_sub; ++s) bucket_end[s + 1] += bucket_end[s];
    for (int64_t t = 0; t < B; ++t) perm[bucket_end[cur[t] - (n_sub - 1)]++] = (int32_t)t;
    const int j0 = k * (a.depth + 1);
    at::parallel_for(0, B, kChunk, [&](int64_t i0, int64_t i1) {
      int32_t order[kChunk];
      for (int64_t i = i0; i < i1;) {
        const int64_t end = std::min({i1, i + kChunk, (int64_t)bucket_end[cur[perm[i]] - (n_sub - 1)]});
        route_group<Isa>(a, perm + i, end - i, k, S, a.depth + 1, cur, node, act, order);
        for (; i < end; ++i) {
          const int64_t t = perm[i];
          // this tree's D+1 rows into y: the first tree writes (streamed if it is the only one), later ones add
          Isa::rows(&act[t * a.L + j0], &node[t * a.L + j0], a.depth + 1, a.wt, a.H_out, a.H_out, a.y + t * a.H_out,
                    /*accumulate=*/k > 0, /*stream=*/a.n_trees == 1);
        }
      }
      _mm_sfence();  // this thread's streamed stores are ordered before the join (SSE: any x86-64)
    });
  }
}

// A fresh (B, H_out) float32 output. Large ones live in 2 MiB transparent huge pages (a 50 MB output in
// 4 KiB pages costs ~12k page faults on first touch, more than the kernel itself at 16k tokens), and when
// such a tensor dies its buffer is kept for the next call (at most 4 buffers, 512 MB), as a caching
// allocator does: a reused buffer needs neither faults nor the kernel's zeroing of fresh pages.
struct BufferCache {
  std::mutex m;
  std::vector<std::pair<size_t, void*>> free;
  size_t bytes = 0;
};
BufferCache& buffer_cache() {
  static BufferCache* c = new BufferCache;  // never destroyed: tensors may die during interpreter exit
  return *c;
}

void release_buffer(void* p, size_t size) {
  BufferCache& c = buffer_cache();
  std::lock_guard<std::mutex> lock(c.m);
  if (c.free.size() < 4 && c.bytes + size <= (size_t(512) << 20)) {
    c.free.emplace_back(size, p);
    c.bytes += size;
  } else {
    free(p);
  }
}

at::Tensor new_output(int64_t B, int64_t H) {
  const size_t bytes = size_t(B) * size_t(H) * sizeof(float);
  constexpr size_t kHuge = size_t(2) << 20;
  if (bytes < 2 * kHuge) return at::empty({B, H}, at::kFloat);
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  void* p = nullptr;
  {
    BufferCache& c = buffer_cache();
    std::lock_guard<std::mutex> lock(c.m);
    for (size_t i = 0; i < c.free.size(); ++i)
      if (c.free[i].first == rounded) {
        p = c.free[i].second;
        c.free.erase(c.free.begin() + i);
        c.bytes -= rounded;
        break;
      }
  }
  if (p == nullptr) {
    if (posix_memalign(&p, kHuge, rounded) != 0) return at::empty({B, H}, at::kFloat);
    madvise(p, rounded, MADV_HUGEPAGE);  // a hint: without THP it is ordinary memory
  }
  return at::from_blob(p, {B, H}, [rounded](void* q) { release_buffer(q, rounded); },
                          at::TensorOptions().dtype(at::kFloat));
}

// Versions 2-4 with one path's routines; cur/node/act are scratch for v3 and v4.
template <class Isa, class T>
void run(const Args<T>& a, int64_t version, int64_t* cur, int32_t* node, float* act) {
  if (version == 4) {
    two_pass<Isa>(a, cur, node, act);
    return;
  }
  // Threads split the tokens into contiguous ranges (whole blocks for v3); torch's intra-op pool.
  const int64_t grain = version == 3 ? kBlock : 16;
  at::parallel_for(0, (a.B + grain - 1) / grain, 1, [&](int64_t g0, int64_t g1) {
    const int64_t t0 = g0 * grain, t1 = std::min(a.B, g1 * grain);
    if (version == 1) per_token<ufkit::Scalar>(a, t0, t1);
    else if (version == 2) per_token<Isa>(a, t0, t1);
    else blocked<Isa>(a, t0, t1, cur, node, act);
  });
}

// ---- the dispatcher -----------------------------------------------------------------------------------
// Paths narrowest first, each with the CPU flags (/proc/cpuinfo spelling) its routines need; avx512_bf16
// only exists for bfloat16 weights (with float32 weights there is nothing for vdpbf16ps to do). pick_isa is a
// pure function of the flags so that tests can call it with mocked ones; the kernel calls it with cpuid's.
struct Path {
  const char* name;
  std::vector<std::string> flags;
  bool bf16_only;
};
const std::vector<Path>& paths() {
  static const std::vector<Path> p{
      {"scalar", {}, false},
      {"avx2", {"avx2", "fma"}, false},
      {"avx512", {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}, false},
      {"avx512_bf16", {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}, true}};
  return p;
}

bool has_all(const std::vector<std::string>& flags, const std::vector<std::string>& need, std::string* missing) {
  bool ok = true;
  for (const auto& f : need)
    if (std::find(flags.begin(), flags.end(), f) == flags.end()) {
      ok = false;
      if (missing) *missing += (missing->empty() ? "" : ", ") + f;
    }
  return ok;
}

// The kernel for one storage type: T = float, or ufkit::bf16 with x rounded to a bf16 copy first.
template <class T>
void forward_impl(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& wt_out,
                  at::Tensor& y, int32_t* route_ptr, int depth, int n_trees, int64_t version, const std::string& path) {
  const int64_t B = x.size(0), H_in = x.size(1), N = (int64_t(1) << (depth + 1)) - 1;
  const int L = n_trees * (depth + 1);
  const T* xp;
  if constexpr (std::is_same_v<T, float>) {
    xp = x.data_ptr<float>();
  } else {
    // One rounding pass, (B, H_in) float32 -> bf16, so every dot product reads half the bytes of x too.
    thread_local std::vector<ufkit::bf16> xb_v;
    ufkit::bf16* xb = scratch(xb_v, B * H_in);
    const float* xf = x.data_ptr<float>();
    at::parallel_for(0, B * H_in, 1 << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) xb[i] = ufkit::to_bf16(xf[i]);
    });
    xp = xb;
  }
  const T* wi = static_cast<const T*>(w_in.data_ptr());
  const T* wt = static_cast<const T*>(wt_out.data_ptr());
  Args<T> a{xp, wi, b_in.data_ptr<float>(), wt, y.data_ptr<float>(), route_ptr, B, H_in, wt_out.size(1), depth,
            n_trees, N, L};
  thread_local std::vector<int64_t> cur_v;
  thread_local std::vector<int32_t> node_v;
  thread_local std::vector<float> act_v;
  int64_t* cur = version >= 3 ? scratch(cur_v, B) : nullptr;
  int32_t* node = version >= 3 ? scratch(node_v, B * L) : nullptr;
  float* act = version >= 3 ? scratch(act_v, B * L) : nullptr;
  if (path == "avx512_bf16") {  // pick_isa gives it for bf16 weights only
    if constexpr (std::is_same_v<T, ufkit::bf16>) run<ufkit::Avx512Bf16>(a, version, cur, node, act);
  } else if (path == "avx512") {
    run<ufkit::Avx512>(a, version, cur, node, act);
  } else if (path == "avx2") {
    run<ufkit::Avx2>(a, version, cur, node, act);
  } else {
    run<ufkit::Scalar>(a, version, cur, node, act);
  }
  if (version >= 3 && route_ptr) std::copy(node, node + B * L, route_ptr);
}

}  // namespace

// The flags of paths() this CPU has, as cpuid (through libgcc, which also checks that the OS saves the
// vector state) reports them.
std::vector<std::string> fff_native_cpu_features() {
  std::vector<std::string> f;
  if (__builtin_cpu_supports("avx2")) f.push_back("avx2");
  if (__builtin_cpu_supports("fma")) f.push_back("fma");
  if (__builtin_cpu_supports("avx512f")) f.push_back("avx512f");
  if (__builtin_cpu_supports("avx512bw")) f.push_back("avx512bw");
  if (__builtin_cpu_supports("avx512vl")) f.push_back("avx512vl");
  if (__builtin_cpu_supports("avx512dq")) f.push_back("avx512dq");
  if (__builtin_cpu_supports("avx512bf16")) f.push_back("avx512_bf16");
  return f;
}

// The path a CPU with `flags` runs for `requested` ("auto": the widest it supports, else that path if it
// supports it), for float32 or (bf16_weights) bfloat16 weights. Raises ValueError for an unknown name, a
// bf16-only path with float32 weights, or a path the flags do not allow, naming what is missing.
std::string fff_native_pick_isa(const std::string& requested, const std::vector<std::string>& flags,
                                bool bf16_weights) {
  if (requested == "auto") {
    for (auto p = paths().rbegin(); p != paths().rend(); ++p)
      if ((bf16_weights || !p->bf16_only) && has_all(flags, p->flags, nullptr)) return p->name;
  }
  for (const auto& p : paths()) {
    if (requested != p.name) continue;
    TORCH_CHECK_VALUE(bf16_weights || !p.bf16_only, "the ", p.name, " path is for bfloat16 weights only");
    std::string missing;
    TORCH_CHECK_VALUE(has_all(flags, p.flags, &missing), "the ", p.name, " path needs the CPU flags ", missing,
                      ", which this CPU lacks");
    return p.name;
  }
  TORCH_CHECK_VALUE(false, "isa must be 'auto', 'scalar', 'avx2', 'avx512' or 'avx512_bf16', got '", requested, "'");
  return "";
}

using ufkit_fff::check_2d;

// y (B, H_out) = FFF(x); route, if non-empty, receives the (B, K*(D+1)) visited rows as int32; out, if given,
// is written instead of a new tensor (a fresh 50 MB output costs ~25 ms of page faults on a small VM).
// x is float32; w_in and wt_out are both float32, or both bfloat16 (then x is rounded to bfloat16 for the
// dot products, which sum in float32, and the output sums bf16 rows with float32 coefficients).
at::Tensor fff_native_forward(at::Tensor x, at::Tensor w_in, at::Tensor b_in, at::Tensor wt_out,
                                 int64_t depth, int64_t n_trees, int64_t version, at::Tensor route,
                                 std::optional<at::Tensor> out, const std::string& isa) {
  const bool bf16 = w_in.scalar_type() == at::kBFloat16;
  const at::ScalarType wtype = bf16 ? at::kBFloat16 : at::kFloat;
  static const std::vector<std::string> cpu = fff_native_cpu_features();
  const std::string path = fff_native_pick_isa(isa, cpu, bf16);  // the guard: never a path this CPU lacks
  check_2d(x, "x", at::kFloat);
  check_2d(w_in, "w_in", wtype);
  check_2d(wt_out, "wt_out", wtype);  // the same dtype as w_in
  TORCH_CHECK_VALUE(depth >= 0 && depth <= 20, "depth must be in [0, 20], got ", depth);
  TORCH_CHECK_VALUE(n_trees >= 1, "n_trees must be >= 1, got ", n_trees);
  const int64_t N = (int64_t(1) << (depth + 1)) - 1;
  const int64_t width = n_trees * N;
  TORCH_CHECK_VALUE(width < (int64_t(1) << 31) && x.size(0) < (int64_t(1) << 31),
                    "n_trees * N and the number of tokens must fit in 32 bits");
  TORCH_CHECK_VALUE(w_in.size(0) == width, "w_in must have n_trees * (2^(depth+1) - 1) = ", width, " rows, got ",
                    w_in.size(0));
  TORCH_CHECK_VALUE(w_in.size(1) == x.size(1), "w_in must have H_in = ", x.size(1), " columns, got ", w_in.size(1));
  TORCH_CHECK_VALUE(b_in.is_cpu() && b_in.scalar_type() == at::kFloat && b_in.is_contiguous() &&
                        b_in.dim() == 1 && b_in.size(0) == width,
                    "b_in must be a contiguous float32 CPU tensor of shape (", width, ")");
  TORCH_CHECK_VALUE(wt_out.size(0) == width, "wt_out must have ", width, " rows, got ", wt_out.size(0));
  TORCH_CHECK_VALUE(version >= 0 && version <= 4, "version must be 0 (best), 1, 2, 3 or 4, got ", version);
  const int L = int(n_trees * (depth + 1));
  int32_t* route_ptr = nullptr;
  if (route.numel() > 0) {
    TORCH_CHECK_VALUE(route.scalar_type() == at::kInt && route.is_contiguous() && route.dim() == 2 &&
                          route.size(0) == x.size(0) && route.size(1) == L,
                      "route must be a contiguous int32 tensor of shape (B, ", L, ")");
    route_ptr = route.data_ptr<int32_t>();
  }
  // v4 pays off once its buckets hold many tokens each; small batches route in blocks (v3), which also
  // splits them between threads 64 tokens at a time.
  // With many trees v3 is better too: v4 makes two passes (two parallel regions) and a read-modify-write of y
  // per tree.
  if (version == 0)
    version = n_trees <= 2 && depth > g_sub_depth && x.size(0) >= (int64_t(16) << (depth - g_sub_depth)) ? 4 : 3;
  if (version == 4 && depth <= g_sub_depth) version = 3;  // the tree fits L2 whole: one pass is enough
  at::Tensor y;
  if (out.has_value()) {
    y = *out;
    check_2d(y, "out", at::kFloat);
    TORCH_CHECK_VALUE(y.size(0) == x.size(0) && y.size(1) == wt_out.size(1), "out must have shape (", x.size(0), ", ",
                      wt_out.size(1), "), got ", y.sizes());
  } else {
    y = new_output(x.size(0), wt_out.size(1));
  }
  if (x.size(0) == 0) return y;
  if (bf16)
    forward_impl<ufkit::bf16>(x, w_in, b_in, wt_out, y, route_ptr, int(depth), int(n_trees), version, path);
  else
    forward_impl<float>(x, w_in, b_in, wt_out, y, route_ptr, int(depth), int(n_trees), version, path);
  return y;
}

bool fff_native_has_avx2() { return ufkit::cpu_has_avx2(); }

// Tuning knobs for experiments ("sub_depth", "route_prefetch", "out_prefetch"); returns the previous value.
int64_t fff_native_set_tuning(const std::string& name, int64_t value) {
  int* knob = name == "sub_depth" ? &g_sub_depth
              : name == "route_prefetch" ? &g_route_prefetch
              : name == "out_prefetch" ? &g_out_prefetch : nullptr;
  TORCH_CHECK_VALUE(knob != nullptr, "unknown tuning knob ", name);
  TORCH_CHECK_VALUE(value >= (name == "sub_depth" ? 1 : 0) && value <= 64, name, " must be in [", name == "sub_depth" ? 1 : 0,
                    ", 64], got ", value);
  const int64_t old = *knob;
  *knob = int(value);
  return old;
}

// Ops under torch.ops.ufkit_native (ATen-only headers: a build takes seconds, not a minute).
TORCH_LIBRARY(ufkit_native, m) {
  m.def("forward(Tensor x, Tensor w_in, Tensor b_in, Tensor wt_out, int depth, int n_trees, int version, "
        "Tensor route, Tensor? out, str isa='auto') -> Tensor",
        &fff_native_forward);
  m.def("has_avx2() -> bool", &fff_native_has_avx2);
  m.def("cpu_features() -> str[]", &fff_native_cpu_features);
  m.def("pick_isa(str requested, str[] flags, bool bf16_weights=False) -> str", &fff_native_pick_isa);
  m.def("set_tuning(str name, int value) -> int", &fff_native_set_tuning);
}
