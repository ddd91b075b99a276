// fff_mkl.cpp: UltraFastBERT fast feedforward on Intel MKL (PyPI mkl / mkl-devel), plus MKL's dense FF.
// Belcak & Wattenhofer 2023, arXiv:2311.10770. Python entry: ufkit.kernels.fff_forward(backend="mkl").
//
// Shapes: x is (B, H_in), w_in is (K*N, H_in), b_in is (K*N), wt_out is (K*N, H_out) (= w_out transposed),
// y is (B, H_out); N = 2^(D+1) - 1.
// The FFF as two library calls per stage:
//   routing  each token walks its trees with cblas_sdot on the visited rows (K*(D+1) dots of length H_in);
//   output   the GELU values of the visited nodes form a sparse A (B, K*N) with K*(D+1) entries per row, and
//            y = A @ wt_out is one mkl_sparse_s_mm (CSR times a row-major dense matrix).
// Napkin math per token, 1x11 at H = 768: 36.9 kFLOP and <= 72 KiB of weight rows, as in fff_native.cpp.
// dense_ff is the dense baseline on the same library: cblas_sgemm, bias + exact GELU, cblas_sgemm
// (2 * B * H * I * 2 FLOP: 12.9 MFLOP per token at I = 4095).
//
// MKL is opened with dlopen from the path Python passes to init() and its functions looked up by name, so
// these calls reach the PyPI MKL and never the copy linked inside libtorch. Before the first call the
// threading layer is set to GNU OpenMP (the libgomp torch uses); Intel's libiomp5 beside libgomp gives
// wrong results, so it is never loaded.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>
#include <dlfcn.h>

#include <mkl.h>

#include <string>
#include <vector>

#include "fff_checks.h"
#include "fff_simd.h"

namespace {

struct Mkl {
  void* handle = nullptr;
  decltype(&MKL_Set_Threading_Layer) set_threading_layer = nullptr;
  decltype(&MKL_Set_Num_Threads) set_num_threads = nullptr;
  decltype(&cblas_sdot) sdot = nullptr;
  decltype(&cblas_sgemm) sgemm = nullptr;
  decltype(&mkl_sparse_s_create_csr) create_csr = nullptr;
  decltype(&mkl_sparse_s_mm) sparse_mm = nullptr;
  decltype(&mkl_sparse_destroy) destroy = nullptr;
};
Mkl mkl;

template <class F>
void sym(F& f, const char* name) {
  f = reinterpret_cast<F>(dlsym(mkl.handle, name));
  TORCH_CHECK(f != nullptr, "MKL symbol ", name, " not found: ", dlerror());
}

void init(std::string path) {
  if (mkl.handle) return;
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  TORCH_CHECK(h != nullptr, "cannot dlopen ", path, ": ", dlerror());
  mkl.handle = h;
  sym(mkl.set_threading_layer, "MKL_Set_Threading_Layer");
  sym(mkl.set_num_threads, "MKL_Set_Num_Threads");
  sym(mkl.sdot, "cblas_sdot");
  sym(mkl.sgemm, "cblas_sgemm");
  sym(mkl.create_csr, "mkl_sparse_s_create_csr");
  sym(mkl.sparse_mm, "mkl_sparse_s_mm");
  sym(mkl.destroy, "mkl_sparse_destroy");
  mkl.set_threading_layer(MKL_THREADING_GNU);  // must precede every other MKL call
}

}  // namespace

using ufkit_fff::check_f32_2d;

at::Tensor fff_mkl_forward(at::Tensor x, at::Tensor w_in, at::Tensor b_in, at::Tensor wt_out,
                              int64_t depth, int64_t n_trees, int64_t version, at::Tensor route,
                              std::optional<at::Tensor> out) {
  TORCH_CHECK(mkl.handle != nullptr, "call init(path_to_libmkl_rt) first");
  check_f32_2d(x, "x");
  check_f32_2d(w_in, "w_in");
  check_f32_2d(wt_out, "wt_out");
  TORCH_CHECK_VALUE(depth >= 0 && depth <= 20, "depth must be in [0, 20], got ", depth);
  TORCH_CHECK_VALUE(n_trees >= 1, "n_trees must be >= 1, got ", n_trees);
  TORCH_CHECK_VALUE(version == 0 || version == 1, "version must be 0 or 1, got ", version);
  const int64_t N = (int64_t(1) << (depth + 1)) - 1, width = n_trees * N;
  TORCH_CHECK_VALUE(w_in.size(0) == width && w_in.size(1) == x.size(1), "w_in must have shape (", width, ", ",
                    x.size(1), "), got ", w_in.sizes());
  TORCH_CHECK_VALUE(b_in.is_cpu() && b_in.scalar_type() == at::kFloat && b_in.is_contiguous() &&
                        b_in.dim() == 1 && b_in.size(0) == width,
                    "b_in must be a contiguous float32 CPU tensor of shape (", width, ")");
  TORCH_CHECK_VALUE(wt_out.size(0) == width, "wt_out must have ", width, " rows, got ", wt_out.size(0));
  const int64_t B = x.size(0), H_in = x.size(1), H_out = wt_out.size(1);
  const int L = int(n_trees * (depth + 1));
  TORCH_CHECK_VALUE(B * L < (int64_t(1) << 31), "too many tokens for 32-bit MKL indices: ", B);
  at::Tensor y = out.has_value() ? *out : at::empty({B, H_out}, x.options());
  check_f32_2d(y, "out");
  TORCH_CHECK_VALUE(y.size(0) == B && y.size(1) == H_out, "out must have shape (", B, ", ", H_out, ")");
  if (B == 0) return y;

  // Routing: the CSR column indices are the visited rows, the values their GELU(z).
  std::vector<MKL_INT> row_ptr(B + 1), col(B * L);
  std::vector<float> val(B * L);
  const float* xp = x.data_ptr<float>();
  const float* w = w_in.data_ptr<float>();
  const float* b = b_in.data_ptr<float>();
  at::parallel_for(0, B, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int j = 0;
      for (int64_t k = 0; k < n_trees; ++k) {
        int64_t n = 0;
        for (int64_t l = 0; l <= depth; ++l, ++j) {
          const int64_t r = k * N + n;
          const float z = b[r] + mkl.sdot((MKL_INT)H_in, xp + t * H_in, 1, w + r * H_in, 1);
          col[t * L + j] = (MKL_INT)r;
          val[t * L + j] = ufkit::gelu(z);
          n = 2 * n + 1 + (z > 0.f);
        }
      }
      row_ptr[t + 1] = (MKL_INT)((t + 1) * L);
    }
  });
  row_ptr[0] = 0;
  if (route.numel() > 0) {
    TORCH_CHECK_VALUE(route.scalar_type() == at::kInt && route.is_contiguous() && route.numel() == B * L,
                      "route must be a contiguous int32 tensor of shape (B, ", L, ")");
    std::copy(col.begin(), col.end(), route.data_ptr<int32_t>());
  }

  // Output: y = A @ wt_out with A sparse (B, K*N).
  mkl.set_num_threads(at::get_num_threads());
  sparse_matrix_t A = nullptr;
  sparse_status_t st = mkl.create_csr(&A, SPARSE_INDEX_BASE_ZERO, (MKL_INT)B, (MKL_INT)width, row_ptr.data(),
                                      row_ptr.data() + 1, col.data(), val.data());
  TORCH_CHECK(st == SPARSE_STATUS_SUCCESS, "mkl_sparse_s_create_csr failed: status ", int(st));
  matrix_descr descr;
  descr.type = SPARSE_MATRIX_TYPE_GENERAL;
  st = mkl.sparse_mm(SPARSE_OPERATION_NON_TRANSPOSE, 1.0f, A, descr, SPARSE_LAYOUT_ROW_MAJOR, wt_out.data_ptr<float>(),
                     (MKL_INT)H_out, (MKL_INT)H_out, 0.0f, y.data_ptr<float>(), (MKL_INT)H_out);
  mkl.destroy(A);
  TORCH_CHECK(st == SPARSE_STATUS_SUCCESS, "mkl_sparse_s_mm failed: status ", int(st));
  return y;
}

// Dense feedforward on MKL: y = GELU(x @ w1^T + b1) @ w2^T + b2; x (B, H), w1 (I, H), w2 (H_out, I).
at::Tensor dense_ff(at::Tensor x, at::Tensor w1, at::Tensor b1, at::Tensor w2, at::Tensor b2) {
  TORCH_CHECK(mkl.handle != nullptr, "call init(path_to_libmkl_rt) first");
  for (auto* p : {&x, &w1, &w2}) check_f32_2d(*p, "x, w1 and w2");
  const int64_t B = x.size(0), H = x.size(1), I = w1.size(0), H_out = w2.size(0);
  TORCH_CHECK_VALUE(w1.size(1) == H && w2.size(1) == I && b1.numel() == I && b2.numel() == H_out,
                    "dense_ff shapes: x (B, H), w1 (I, H), b1 (I), w2 (H_out, I), b2 (H_out)");
  auto h = at::empty({B, I}, x.options());
  auto y = at::empty({B, H_out}, x.options());
  if (B == 0) return y;
  mkl.set_num_threads(at::get_num_threads());
  mkl.sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, I, H, 1.0f, x.data_ptr<float>(), H, w1.data_ptr<float>(), H,
            0.0f, h.data_ptr<float>(), I);
  const float* bb = b1.contiguous().data_ptr<float>();
  float* hp = h.data_ptr<float>();
  at::parallel_for(0, B, 64, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t i = 0; i < I; ++i) hp[t * I + i] = ufkit::gelu(hp[t * I + i] + bb[i]);
  });
  // y = h @ w2^T + b2: start y from the broadcast bias, then beta = 1
  y.copy_(b2.reshape({1, H_out}).expand({B, H_out}));
  mkl.sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, H_out, I, 1.0f, hp, I, w2.data_ptr<float>(), I, 1.0f,
            y.data_ptr<float>(), H_out);
  return y;
}

std::string mkl_library() {
  Dl_info info;
  if (mkl.sdot && dladdr(reinterpret_cast<void*>(mkl.sdot), &info) && info.dli_fname) return info.dli_fname;
  return "";
}

// Ops under torch.ops.ufkit_mkl (ATen-only headers: a build takes seconds, not a minute).
TORCH_LIBRARY(ufkit_mkl, m) {
  m.def("init(str path) -> ()", &init);
  m.def("forward(Tensor x, Tensor w_in, Tensor b_in, Tensor wt_out, int depth, int n_trees, int version, "
        "Tensor route, Tensor? out) -> Tensor",
        &fff_mkl_forward);
  m.def("dense_ff(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> Tensor", &dense_ff);
  m.def("library() -> str", &mkl_library);
}
