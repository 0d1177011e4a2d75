# The SDK's fingerprint: a hash of every public header a plugin compiles against (the directories
# MoeqInstall.cmake installs). A plugin records the fingerprint it was built with and the loader
# refuses one that differs, so a plugin built against an older checkout or install (whose
# AttentionOptions, say, had another layout) is named instead of crashing. Any change to those
# headers re-runs this (CMAKE_CONFIGURE_DEPENDS), so the fingerprint is never stale.
set(_moeq_sdk_header_dirs
  core/include/moeq/core kernels/include/moeq/kernels core/quant/include/moeq/quant
  core/io/include/moeq/io core/runtime/include/moeq/runtime core/export/include/moeq/export
  core/pipeline/include/moeq/pipeline adapters/include/moeq/adapters
  registry/include/moeq/registry)
set(_moeq_sdk_headers)
foreach(dir IN LISTS _moeq_sdk_header_dirs)
  file(GLOB_RECURSE _found CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/${dir}/*.h")
  list(APPEND _moeq_sdk_headers ${_found})
endforeach()
list(SORT _moeq_sdk_headers)
set_property(DIRECTORY "${PROJECT_SOURCE_DIR}" APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
             ${_moeq_sdk_headers})
set(_moeq_sdk_manifest "")
foreach(header IN LISTS _moeq_sdk_headers)
  file(RELATIVE_PATH _relative "${PROJECT_SOURCE_DIR}" "${header}")
  file(SHA256 "${header}" _hash)
  string(APPEND _moeq_sdk_manifest "${_relative} ${_hash}\n")
endforeach()
string(SHA256 _moeq_sdk_hash "${_moeq_sdk_manifest}")
string(SUBSTRING "${_moeq_sdk_hash}" 0 16 MOEQ_SDK_FINGERPRINT)
configure_file("${PROJECT_SOURCE_DIR}/registry/sdk_fingerprint.h.in"
               "${PROJECT_BINARY_DIR}/generated/include/moeq/registry/sdk_fingerprint.h" @ONLY)
