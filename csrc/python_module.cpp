// The Python module dvn_kernels._C_torch<version>: empty; importing it loads the library, whose
// static initialisers register the ops with torch. setup.py names it after the torch it is
// built against (DVN_MODULE, see dvn_kernels/build_tag.py), so builds for several torch stacks
// coexist. Built only by setup.py (not by CMake), under Python's limited API, without pybind11,
// as in pytorch/extension-cpp.
#include <Python.h>

#ifndef DVN_MODULE
#define DVN_MODULE _C
#endif
#define DVN_STR2(x) #x
#define DVN_STR(x) DVN_STR2(x)
#define DVN_CAT2(a, b) a##b
#define DVN_CAT(a, b) DVN_CAT2(a, b)

extern "C" {
PyMODINIT_FUNC DVN_CAT(PyInit_, DVN_MODULE)(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, DVN_STR(DVN_MODULE),
      "dvn_kernels C++/CUDA kernels (registered as torch ops)", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
