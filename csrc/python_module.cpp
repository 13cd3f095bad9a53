// The Python module dvn_kernels._C: empty; importing it loads the library, whose static
// initialisers register the ops with torch. Built only by setup.py (not by CMake), under
// Python's limited API, without pybind11, as in pytorch/extension-cpp.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "dvn_kernels C++/CUDA kernels (registered as torch ops)", -1,
      nullptr};
  return PyModule_Create(&module_def);
}
}
