// leaf_fff.cpp: the leaf fast feedforward layer's hard form for inference, fused into one op (ATen).
// Belcak & Wattenhofer, "Fast Feedforward Networks", arXiv:2308.14711. Python entry:
// ufkit.fff.leaf.leaf_fff_forward(backend="native"); reference: ufkit.fff.leaf.leaf_fff_reference.
//
// Shapes: x (T, H_in), router_weight (L-1, H_in), router_bias (L-1), w1 (L, w, H_in), b1 (L, w),
// w2 (L, H_out, w), b2 (L, H_out), y (T, H_out); L = 2^depth leaves, routers heap-numbered (children of r are
// 2r+1 and 2r+2, go right iff z > 0), leaf l is heap node L-1+l.
//
// Steps: all router logits in one small product (L-1 is 7 for depth 3: cheap), the walk down the tree per token,
// a counting sort of the tokens by leaf, then per leaf one gather, two GEMMs (oneDNN/MKL through addmm) with the
// activation in place, and one scatter. A leaf every token takes skips the gather and the scatter. The Python
// version of these steps pays the interpreter and the dispatcher per leaf; here only the dispatcher is left.

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/index_copy.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/relu.h>
#include <torch/library.h>

#include <vector>

namespace {

void check_f32(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must be ", dim, "-d, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
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
  auto opts = at::TensorOptions().dtype(at::kLong);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t c = count[l];
    if (c == 0) continue;
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
