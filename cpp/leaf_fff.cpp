// leaf_fff.cpp: the leaf fast feedforward layer's hard form for inference, fused into one op (ATen).
// Belcak & Wattenhofer, "Fast Feedforward Networks", arXiv:2308.14711. Python entry:
// ufkit.fff.leaf.leaf_fff_forward(backend="native"); reference: ufkit.fff.leaf.leaf_fff_reference.
//
// Shapes: x (T, H_in), router_weight (L-1, H_in), router_bias (L-1), w1 (L, w, H_in), b1 (L, w),
// w2 (L, H_out, w), b2 (L, H_out), y (T, H_out); L = 2^depth leaves, routers heap-numbered (children of r are
// 2r+1 and 2r+2, go right iff z > 0), leaf l is heap node L-1+l.
//
// Steps: all router logits in one small product (L-1 is 7 for depth 3: cheap), the walk down the tree per token,
// a counting sort of the tokens by leaf, then one of two paths per leaf:
//   few tokens (<= kSmallLeaf): SIMD dot products straight from the weights, four tokens per weight row (dot4 of
//     fff_simd.h, AVX-512 / AVX2 / scalar by cpuid), h = act(w1[l] x + b1[l]) and y = w2[l] h + b2[l], with all
//     leaves' rows in one parallel loop per stage. A sentence at batch 1 sends two or three tokens to a leaf: a
//     GEMM call per leaf would cost more in dispatch and packing than the arithmetic itself;
//   many tokens: one gather, two GEMMs (oneDNN/MKL through addmm) with the activation in place, one scatter; a
//     leaf every token takes skips the gather and the scatter.

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/index_copy.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/relu.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "fff_simd.h"

namespace {

void check_f32(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must be ", dim, "-d, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

// Leaves with at most this many tokens take the SIMD path.
constexpr int64_t kSmallLeaf = 64;

enum class Isa { Scalar, Avx2, Avx512 };

Isa leaf_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && ufkit::cpu_has_avx2())
      return Isa::Avx512;
    return ufkit::cpu_has_avx2() ? Isa::Avx2 : Isa::Scalar;
  }();
  return isa;
}

// out[k * ld_out + r] = dot(rows[r], in[k]) + bias[r] (then act) for the n tokens in[0..n) and rows r0..r1.
template <class S>
void rows_times_tokens(const float* rows, int64_t len, const float* bias, const float* const* in, int64_t n,
                       float* const* out, int64_t r0, int64_t r1, int64_t activation) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* w = rows + r * len;
    int64_t k = 0;
    float z4[4];
    for (; k + 4 <= n; k += 4) {
      S::dot4(in[k], in[k + 1], in[k + 2], in[k + 3], w, len, z4);
      for (int i = 0; i < 4; ++i) out[k + i][r] = z4[i] + bias[r];
    }
    for (; k < n; ++k) out[k][r] = S::dot(in[k], w, len) + bias[r];
    if (activation >= 0)
      for (int64_t i = 0; i < n; ++i) {
        float& v = out[i][r];
        v = activation == 0 ? ufkit::gelu(v) : (v > 0.f ? v : 0.f);
      }
  }
}

// The SIMD path for the leaves in `small` (their tokens order[start[l] .. start[l] + count[l])).
template <class S>
void small_leaves(const std::vector<int64_t>& small, const std::vector<int64_t>& start,
                  const std::vector<int64_t>& count, const std::vector<int64_t>& order, const float* xp, int64_t H,
                  const float* w1, const float* b1, const float* w2, const float* b2, int64_t w, int64_t O,
                  float* yp, int64_t activation) {
  int64_t n_small = 0;
  for (int64_t l : small) n_small += count[l];
  std::vector<float> h(n_small * w);
  std::vector<const float*> xin(n_small), hin(n_small);
  std::vector<float*> hout(n_small), yout(n_small);
  std::vector<int64_t> first(small.size());  // each small leaf's first slot in h / the pointer lists
  int64_t slot = 0;
  for (size_t i = 0; i < small.size(); ++i) {
    first[i] = slot;
    const int64_t l = small[i];
    for (int64_t k = 0; k < count[l]; ++k, ++slot) {
      const int64_t t = order[start[l] + k];
      xin[slot] = xp + t * H;
      hout[slot] = h.data() + slot * w;
      hin[slot] = h.data() + slot * w;
      yout[slot] = yp + t * O;
    }
  }
  const int64_t S1 = int64_t(small.size()) * w, S2 = int64_t(small.size()) * O;
  // stage 1: h = act(w1[l] x + b1[l]), parallel over (leaf, neuron) rows
  at::parallel_for(0, S1, 16, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1;) {
      const int64_t i = q / w, r0 = q % w, r1 = std::min<int64_t>(w, r0 + (q1 - q));
      const int64_t l = small[i];
      rows_times_tokens<S>(w1 + l * w * H, H, b1 + l * w, xin.data() + first[i], count[l], hout.data() + first[i],
                           r0, r1, activation);
      q += r1 - r0;
    }
  });
  // stage 2: y = w2[l] h + b2[l], parallel over (leaf, output) rows
  at::parallel_for(0, S2, 32, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1;) {
      const int64_t i = q / O, r0 = q % O, r1 = std::min<int64_t>(O, r0 + (q1 - q));
      const int64_t l = small[i];
      rows_times_tokens<S>(w2 + l * O * w, w, b2 + l * O, hin.data() + first[i], count[l], yout.data() + first[i],
                           r0, r1, -1);
      q += r1 - r0;
    }
  });
}

at::Tensor leaf_fff(const at::Tensor& x, const at::Tensor& router_weight, const at::Tensor& router_bias,
                    const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                    int64_t depth, int64_t activation) {
  TORCH_CHECK_VALUE(depth >= 1 && depth <= 16, "depth must be in [1, 16], got ", depth);
  TORCH_CHECK_VALUE(activation == 0 || activation == 1, "activation must be 0 (gelu) or 1 (relu), got ", activation);
  check_f32(x, "x", 2);
  check_f32(router_weight, "router_weight", 2);
  check_f32(router_bias, "router_bias", 1);
  check_f32(w1, "w1", 3);
  check_f32(b1, "b1", 2);
  check_f32(w2, "w2", 3);
  check_f32(b2, "b2", 2);
  const int64_t T = x.size(0), H = x.size(1), L = int64_t(1) << depth;
  const int64_t w = w1.size(1), O = w2.size(1);
  TORCH_CHECK_VALUE(router_weight.size(0) == L - 1 && router_weight.size(1) == H, "router_weight must be (",
                    L - 1, ", ", H, "), got ", router_weight.sizes());
  TORCH_CHECK_VALUE(router_bias.size(0) == L - 1, "router_bias must be (", L - 1, "), got ", router_bias.sizes());
  TORCH_CHECK_VALUE(w1.size(0) == L && w1.size(2) == H, "w1 must be (", L, ", w, ", H, "), got ", w1.sizes());
  TORCH_CHECK_VALUE(b1.size(0) == L && b1.size(1) == w, "b1 must be (", L, ", ", w, "), got ", b1.sizes());
  TORCH_CHECK_VALUE(w2.size(0) == L && w2.size(2) == w, "w2 must be (", L, ", H_out, ", w, "), got ", w2.sizes());
  TORCH_CHECK_VALUE(b2.size(0) == L && b2.size(1) == O, "b2 must be (", L, ", ", O, "), got ", b2.sizes());

  at::Tensor y = at::empty({T, O}, x.options());
  if (T == 0) return y;
  at::Tensor z = at::addmm(router_bias, x, router_weight.t()).contiguous();  // (T, L-1)
  const float* zp = z.data_ptr<float>();
  std::vector<int64_t> leaf(T), count(L, 0);
  for (int64_t t = 0; t < T; ++t) {
    int64_t n = 0;
    for (int64_t level = 0; level < depth; ++level) n = 2 * n + 1 + (zp[t * (L - 1) + n] > 0.0f ? 1 : 0);
    leaf[t] = n - (L - 1);
    ++count[leaf[t]];
  }
  std::vector<int64_t> start(L + 1, 0), order(T);
  for (int64_t l = 0; l < L; ++l) start[l + 1] = start[l] + count[l];
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t t = 0; t < T; ++t) order[next[leaf[t]]++] = t;  // stable: tokens keep their order per leaf
  }
  std::vector<int64_t> small;
  for (int64_t l = 0; l < L; ++l)
    if (count[l] > 0 && count[l] <= kSmallLeaf) small.push_back(l);
  if (!small.empty()) {
    const float *xp = x.data_ptr<float>(), *w1p = w1.data_ptr<float>(), *b1p = b1.data_ptr<float>();
    const float *w2p = w2.data_ptr<float>(), *b2p = b2.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    switch (leaf_isa()) {
      case Isa::Avx512:
        small_leaves<ufkit::Avx512>(small, start, count, order, xp, H, w1p, b1p, w2p, b2p, w, O, yp, activation);
        break;
      case Isa::Avx2:
        small_leaves<ufkit::Avx2>(small, start, count, order, xp, H, w1p, b1p, w2p, b2p, w, O, yp, activation);
        break;
      default:
        small_leaves<ufkit::Scalar>(small, start, count, order, xp, H, w1p, b1p, w2p, b2p, w, O, yp, activation);
    }
  }
  auto opts = at::TensorOptions().dtype(at::kLong);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t c = count[l];
    if (c <= kSmallLeaf) continue;  // none, or done by the SIMD path
    at::Tensor idx = at::from_blob(order.data() + start[l], {c}, opts);
    at::Tensor xs = c == T ? x : at::index_select(x, 0, idx);
    at::Tensor h = at::addmm(b1[l], xs, w1[l].t());
    h = activation == 0 ? at::gelu(h) : at::relu(h);
    at::Tensor out = at::addmm(b2[l], h, w2[l].t());
    if (c == T) return out;
    y.index_copy_(0, idx, out);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ufkit_native, m) {
  m.def("leaf_fff(Tensor x, Tensor router_weight, Tensor router_bias, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
        "int depth, int activation) -> Tensor",
        &leaf_fff);
}
