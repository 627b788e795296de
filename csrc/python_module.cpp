// Makes `dtb_ext._C` importable as a Python module. Importing it loads this shared library, whose static
// initialisers register the dtb operators with the dispatcher (torch.ops.dtb.*); the module itself only tells
// what was built and which CPU kernels were chosen (`_C.build_info()`, read by dtb_ext.ops.kernel_info).
#include <Python.h>

#include "cpu_capability.h"

namespace {

#ifdef DTB_WITH_CUDA
constexpr bool kCudaBuilt = true;
#else
constexpr bool kCudaBuilt = false;
#endif

PyObject* build_info(PyObject*, PyObject*) {
  const dtb::cpu::CapabilityChoice& choice = dtb::cpu::active_capability();
  const std::vector<dtb::cpu::Capability> built = dtb::cpu::built_capabilities();
  PyObject* built_names = PyList_New(static_cast<Py_ssize_t>(built.size()));
  if (built_names == nullptr) {
    return nullptr;
  }
  for (size_t i = 0; i < built.size(); ++i) {
    PyList_SET_ITEM(built_names, static_cast<Py_ssize_t>(i), PyUnicode_FromString(dtb::cpu::capability_name(built[i])));
  }
  // "N" hands the list's reference to the dict; "O" takes a new reference to the bool.
  // The bf16 attention kernel's dot products run only in the AVX512 kernels, on a CPU that has them.
  const bool bf16_dot_products = choice.chosen == dtb::cpu::Capability::AVX512 && dtb::cpu::cpu_has_avx512_bf16();
  const bool amx_attention = bf16_dot_products && dtb::cpu::cpu_amx_attention();
  // The int8 Linear ops' GEMM on AMX tiles (for weights packed by dtb::int8_amx_pack_weight).
  const bool amx_int8 = dtb::cpu::cpu_amx_int8();
  return Py_BuildValue("{s:s,s:N,s:s,s:s,s:s,s:O,s:O,s:O,s:O}", "cpu_capability", dtb::cpu::capability_name(choice.chosen),
                       "cpu_capabilities_built", built_names, "cpu_supports", dtb::cpu::capability_name(choice.cpu_best),
                       "requested", choice.requested.c_str(), "warning", choice.warning.c_str(), "cuda_built",
                       kCudaBuilt ? Py_True : Py_False, "cpu_bf16_dot_products",
                       bf16_dot_products ? Py_True : Py_False, "cpu_amx_attention", amx_attention ? Py_True : Py_False,
                       "cpu_amx_int8", amx_int8 ? Py_True : Py_False);
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS,
     "{cpu_capability, cpu_capabilities_built, cpu_supports, requested, warning, cuda_built, cpu_bf16_dot_products, "
     "cpu_amx_attention, cpu_amx_int8}: the instruction set whose CPU kernels are registered, the sets compiled in, "
     "the widest this CPU runs, ATEN_CPU_CAPABILITY, why it was not followed, whether the CUDA kernels were "
     "compiled, whether the bf16 attention kernel uses AVX512-BF16 dot products, whether it runs them on AMX tiles, "
     "and whether the int8 Linear ops can run their GEMM on AMX tiles (AMX-INT8)"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "dtb operator kernels (torch.ops.dtb)", -1,
                                          methods};
  return PyModule_Create(&module_def);
}
