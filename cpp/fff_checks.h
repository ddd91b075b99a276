// Boundary checks shared by the CPU extensions (native, mkl): every tensor argument is validated before a raw
// pointer is taken, with a message that names the argument (TORCH_CHECK_VALUE raises ValueError in Python).
#pragma once

#include <ATen/core/Tensor.h>

namespace ufkit_fff {

inline void check_2d(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == dtype, name, " must be ", (dtype == at::kFloat ? "float32" : "bfloat16"),
                    ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-d, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

inline void check_f32_2d(const at::Tensor& t, const char* name) { check_2d(t, name, at::kFloat); }

}  // namespace ufkit_fff
