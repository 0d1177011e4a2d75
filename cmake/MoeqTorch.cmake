# libtorch comes from the pinned torch wheel in the project's virtualenv (tools/setup makes it),
# found through torch.utils.cmake_prefix_path. The wheel also ships headers of libraries it
# bundles (fmt among them); moeq uses Debian's fmt, so those headers are hidden from every moeq
# target to make sure each library is seen in one version only.

set(MOEQ_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH
    "Python interpreter whose torch wheel provides libtorch")
if(NOT EXISTS "${MOEQ_PYTHON}")
  message(FATAL_ERROR "moeq: no Python at MOEQ_PYTHON='${MOEQ_PYTHON}'; run tools/setup first "
                      "or pass -DMOEQ_PYTHON=/path/to/python with torch installed")
endif()

execute_process(
  COMMAND "${MOEQ_PYTHON}" -c
          "import torch, torch.utils; print(torch.utils.cmake_prefix_path); print(torch.__version__)"
  OUTPUT_VARIABLE _moeq_torch_out
  ERROR_VARIABLE _moeq_torch_err
  RESULT_VARIABLE _moeq_torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _moeq_torch_rc EQUAL 0)
  message(FATAL_ERROR "moeq: '${MOEQ_PYTHON}' cannot import torch:\n${_moeq_torch_err}")
endif()
string(REPLACE "\n" ";" _moeq_torch_out "${_moeq_torch_out}")
list(GET _moeq_torch_out 0 MOEQ_TORCH_CMAKE_PREFIX)
list(GET _moeq_torch_out 1 MOEQ_TORCH_VERSION_FULL)
list(APPEND CMAKE_PREFIX_PATH "${MOEQ_TORCH_CMAKE_PREFIX}")

# Torch's CMake config looks for the CUDA toolkit when the wheel was built with CUDA; naming
# the architectures keeps it from probing for a GPU (there is none on the build machine).
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(ENV{TORCH_CUDA_ARCH_LIST} "8.0;9.0a")
endif()
find_package(Torch REQUIRED)
message(STATUS "moeq: libtorch ${MOEQ_TORCH_VERSION_FULL} from ${MOEQ_TORCH_CMAKE_PREFIX}")

# The torch include root, mirrored without the third-party libraries moeq takes from Debian.
get_filename_component(_moeq_torch_root "${MOEQ_TORCH_CMAKE_PREFIX}/../.." ABSOLUTE)
set(_moeq_torch_include "${_moeq_torch_root}/include")
set(MOEQ_TORCH_INCLUDE_MIRROR "${CMAKE_BINARY_DIR}/torch-include")
set(MOEQ_TORCH_HIDDEN_HEADERS fmt)
file(GLOB _moeq_entries RELATIVE "${_moeq_torch_include}" "${_moeq_torch_include}/*")
file(MAKE_DIRECTORY "${MOEQ_TORCH_INCLUDE_MIRROR}")
foreach(_entry IN LISTS _moeq_entries)
  if(NOT _entry IN_LIST MOEQ_TORCH_HIDDEN_HEADERS AND NOT EXISTS "${MOEQ_TORCH_INCLUDE_MIRROR}/${_entry}")
    file(CREATE_LINK "${_moeq_torch_include}/${_entry}" "${MOEQ_TORCH_INCLUDE_MIRROR}/${_entry}"
         SYMBOLIC)
  endif()
endforeach()

# moeq::torch: what moeq targets link instead of ${TORCH_LIBRARIES}, with the filtered includes.
add_library(moeq_torch INTERFACE)
add_library(moeq::torch ALIAS moeq_torch)
set(_moeq_torch_libs)
foreach(_lib IN LISTS TORCH_LIBRARIES)
  if(TARGET ${_lib})
    get_target_property(_type ${_lib} TYPE)
    get_target_property(_loc ${_lib} IMPORTED_LOCATION_RELEASE)
    if(NOT _loc)
      get_target_property(_loc ${_lib} IMPORTED_LOCATION)
    endif()
    if(_loc)
      list(APPEND _moeq_torch_libs "${_loc}")
    endif()
    get_target_property(_opts ${_lib} INTERFACE_COMPILE_OPTIONS)
    if(_opts)
      target_compile_options(moeq_torch INTERFACE ${_opts})
    endif()
    get_target_property(_defs ${_lib} INTERFACE_COMPILE_DEFINITIONS)
    if(_defs)
      target_compile_definitions(moeq_torch INTERFACE ${_defs})
    endif()
  else()
    list(APPEND _moeq_torch_libs "${_lib}")
  endif()
endforeach()
# libc10 and libtorch_cpu are what ATen code needs; torch (and torch_cuda) pull in the rest.
find_library(MOEQ_C10_LIBRARY c10 PATHS "${_moeq_torch_root}/lib" NO_DEFAULT_PATH REQUIRED)
find_library(MOEQ_TORCH_CPU_LIBRARY torch_cpu PATHS "${_moeq_torch_root}/lib" NO_DEFAULT_PATH REQUIRED)
list(APPEND _moeq_torch_libs "${MOEQ_C10_LIBRARY}" "${MOEQ_TORCH_CPU_LIBRARY}")
list(REMOVE_DUPLICATES _moeq_torch_libs)
target_link_libraries(moeq_torch INTERFACE ${_moeq_torch_libs})
# libtorch exports its own copy of std::filesystem, built against a newer libstdc++ than the
# system's (std::filesystem::remove_all then jumps to a null pointer). Putting the system
# libstdc++ first among the needed libraries makes its definitions win symbol lookup.
target_link_options(moeq_torch INTERFACE "LINKER:--push-state,--no-as-needed" "-lstdc++"
                    "LINKER:--pop-state")
target_include_directories(moeq_torch SYSTEM INTERFACE
  "${MOEQ_TORCH_INCLUDE_MIRROR}"
  "${_moeq_torch_include}/torch/csrc/api/include")
set(MOEQ_TORCH_LIB_DIR "${_moeq_torch_root}/lib")
