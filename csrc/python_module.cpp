// Makes the library importable as the Python module gateshift._C.
//
// Importing it loads the shared library, whose static initialisers register the
// operators (csrc/library.cpp and the backend files); the module itself is empty.
// The CMake build leaves this file out: it makes a plain libtorch library, loaded
// with torch.ops.load_library.

#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {  // PyMODINIT_FUNC is extern "C" in C++
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
