// rankops._C: importing it registers the private kernels (namespace rankops_C) with the
// dispatcher; the Python module itself only reports how it was built.
#include <torch/extension.h>

TORCH_LIBRARY(rankops_C, m) {
  // Each op family adds its schemas in its own file (csrc/<family>.cpp) with TORCH_LIBRARY_FRAGMENT.
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "rankops native kernels (private: call them through the rankops.* ops)";
#ifdef RANKOPS_WITH_CUDA
  m.attr("with_cuda") = true;
  m.attr("cuda_archs") = RANKOPS_CUDA_ARCHS;
#else
  m.attr("with_cuda") = false;
  m.attr("cuda_archs") = "";
#endif
  m.attr("torch_version") = RANKOPS_TORCH_VERSION;
}
