// fff_cuda.cpp: torch binding of the CUDA FFF kernels in cuda/fff_cuda.cu (compiled there by nvcc -c).
// Only ATen's device-independent API is used here, so this file builds against any torch wheel; the kernels
// need a CUDA build of torch at run time (CUDA tensors). Shapes: see cuda/fff_cuda.cu.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "fff_cuda.h"

namespace {

void check_cuda_f32(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.device().is_cuda(), name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must be ", dim, "-d, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

}  // namespace

// y (B, H_out) = FFF(x); route (B, K*(D+1)) int32 receives the visited rows when non-empty. stream is the
// cudaStream_t of torch.cuda.current_stream() as an integer.
at::Tensor fff_cuda_forward(at::Tensor x, at::Tensor w_in, at::Tensor b_in, at::Tensor wt_out,
                               int64_t depth, int64_t n_trees, int64_t version, at::Tensor route,
                               std::optional<at::Tensor> out, int64_t stream) {
  check_cuda_f32(x, "x", 2);
  check_cuda_f32(w_in, "w_in", 2);
  check_cuda_f32(b_in, "b_in", 1);
  check_cuda_f32(wt_out, "wt_out", 2);
  TORCH_CHECK_VALUE(depth >= 0 && depth <= 20, "depth must be in [0, 20], got ", depth);
  TORCH_CHECK_VALUE(n_trees >= 1, "n_trees must be >= 1, got ", n_trees);
  TORCH_CHECK_VALUE(version >= 0 && version <= 2, "version must be 0 (best), 1 or 2, got ", version);
  const int64_t N = (int64_t(1) << (depth + 1)) - 1, width = n_trees * N;
  const int64_t B = x.size(0), H_in = x.size(1), H_out = wt_out.size(1);
  TORCH_CHECK_VALUE(w_in.size(0) == width && w_in.size(1) == H_in, "w_in must have shape (", width, ", ", H_in,
                    "), got ", w_in.sizes());
  TORCH_CHECK_VALUE(b_in.size(0) == width, "b_in must have shape (", width, "), got ", b_in.sizes());
  TORCH_CHECK_VALUE(wt_out.size(0) == width, "wt_out must have ", width, " rows, got ", wt_out.size(0));
  TORCH_CHECK_VALUE(x.device() == w_in.device() && x.device() == b_in.device() && x.device() == wt_out.device(),
                    "x, w_in, b_in and wt_out must be on one device");
  const int64_t L = n_trees * (depth + 1);
  at::Tensor y = out.has_value() ? *out : at::empty({B, H_out}, x.options());
  check_cuda_f32(y, "out", 2);
  TORCH_CHECK_VALUE(y.size(0) == B && y.size(1) == H_out, "out must have shape (", B, ", ", H_out, ")");
  at::Tensor r = route;
  if (r.numel() == 0) r = at::empty({B, L}, x.options().dtype(at::kInt));
  TORCH_CHECK_VALUE(r.is_cuda() && r.scalar_type() == at::kInt && r.is_contiguous() && r.numel() == B * L,
                    "route must be a contiguous int32 CUDA tensor of shape (B, ", L, ")");
  auto act = at::empty({B, L}, x.options());
  const int err = ufkit_fff_cuda_forward(x.data_ptr<float>(), w_in.data_ptr<float>(), b_in.data_ptr<float>(),
                                         wt_out.data_ptr<float>(), y.data_ptr<float>(), r.data_ptr<int32_t>(),
                                         act.data_ptr<float>(), B, H_in, H_out, int(depth), int(n_trees),
                                         version == 0 ? 2 : int(version), reinterpret_cast<void*>(stream));
  TORCH_CHECK(err == 0, "CUDA kernel launch failed with cudaError ", err);
  return y;
}

// Ops under torch.ops.ufkit_cuda.
TORCH_LIBRARY(ufkit_cuda, m) {
  m.def("forward(Tensor x, Tensor w_in, Tensor b_in, Tensor wt_out, int depth, int n_trees, int version, "
        "Tensor route, Tensor? out, int stream) -> Tensor",
        &fff_cuda_forward);
}
