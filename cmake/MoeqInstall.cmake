# The SDK: what `cmake --install` puts under the prefix so that plugins build out of tree with
#   find_package(moeq REQUIRED)
#   moeq_add_plugin(my_model SOURCES my_model.cpp)
# Every moeq library is exported: a plugin links moeq::sdk (the registry) and uses the runtime's
# blocks, the adapters and the quantizers through it.
# libtorch is not exported: moeqConfig.cmake finds it again in the Python environment moeq was
# built with (MOEQ_PYTHON), through the same MoeqTorch.cmake, and checks it is the same version.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(MOEQ_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/moeq")

set_target_properties(moeq_base PROPERTIES EXPORT_NAME base)
# Installed libraries find each other ($ORIGIN) and libtorch (the venv's lib dir, named explicitly:
# CMake leaves directories inside the source tree, where .venv usually is, out of the link path
# RPATH) without LD_LIBRARY_PATH.
set(_moeq_sdk_libraries moeq_base moeq_kernels moeq_quant moeq_io moeq_runtime moeq_export
    moeq_pipeline moeq_adapters moeq_registry)
set_target_properties(moeq_kernels PROPERTIES EXPORT_NAME kernels)
set_target_properties(moeq_quant PROPERTIES EXPORT_NAME quant)
set_target_properties(moeq_io PROPERTIES EXPORT_NAME io)
set_target_properties(moeq_runtime PROPERTIES EXPORT_NAME runtime)
set_target_properties(${_moeq_sdk_libraries} PROPERTIES
  INSTALL_RPATH "$ORIGIN;${MOEQ_TORCH_LIB_DIR}" INSTALL_RPATH_USE_LINK_PATH ON)

install(TARGETS ${_moeq_sdk_libraries} moeq_sdk EXPORT moeqTargets
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}"
  INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(DIRECTORY "${PROJECT_SOURCE_DIR}/core/include/moeq/core"
                  "${PROJECT_SOURCE_DIR}/kernels/include/moeq/kernels"
                  "${PROJECT_SOURCE_DIR}/core/quant/include/moeq/quant"
                  "${PROJECT_SOURCE_DIR}/core/io/include/moeq/io"
                  "${PROJECT_SOURCE_DIR}/core/runtime/include/moeq/runtime"
                  "${PROJECT_SOURCE_DIR}/core/export/include/moeq/export"
                  "${PROJECT_SOURCE_DIR}/core/pipeline/include/moeq/pipeline"
                  "${PROJECT_SOURCE_DIR}/adapters/include/moeq/adapters"
                  "${PROJECT_SOURCE_DIR}/registry/include/moeq/registry"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/moeq"
        FILES_MATCHING PATTERN "*.h")
install(FILES "${PROJECT_BINARY_DIR}/generated/include/moeq/registry/sdk_fingerprint.h"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/moeq/registry")
install(EXPORT moeqTargets NAMESPACE moeq:: DESTINATION "${MOEQ_INSTALL_CMAKEDIR}")

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/moeqConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/moeqConfig.cmake"
  INSTALL_DESTINATION "${MOEQ_INSTALL_CMAKEDIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/moeqConfigVersion.cmake"
  COMPATIBILITY ExactVersion)  # the plugin ABI promise: same moeq, same libtorch
install(FILES
  "${PROJECT_BINARY_DIR}/moeqConfig.cmake"
  "${PROJECT_BINARY_DIR}/moeqConfigVersion.cmake"
  "${PROJECT_SOURCE_DIR}/cmake/MoeqTorch.cmake"
  "${PROJECT_SOURCE_DIR}/cmake/MoeqPlugin.cmake"
  "${PROJECT_SOURCE_DIR}/cmake/moeq_plugin.map"
  DESTINATION "${MOEQ_INSTALL_CMAKEDIR}")
