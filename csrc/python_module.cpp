// Makes `dtb_ext._C` importable as a Python module. The module itself is empty: importing it loads this shared
// library, whose static initialisers register the dtb operators with the dispatcher (torch.ops.dtb.*).
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "dtb operator kernels (torch.ops.dtb)", -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
