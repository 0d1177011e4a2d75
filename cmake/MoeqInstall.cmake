# The SDK: what `cmake --install` puts under the prefix so that plugins build out of tree with
#   find_package(moeq REQUIRED)
#   moeq_add_plugin(my_model SOURCES my_model.cpp)
# Exported targets are kept to what a plugin links: moeq::base, moeq::registry and moeq::sdk.
# libtorch is not exported: moeqConfig.cmake finds it again in the Python environment moeq was
# built with (MOEQ_PYTHON), through the same MoeqTorch.cmake, and checks it is the same version.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(MOEQ_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/moeq")

set_target_properties(moeq_base PROPERTIES EXPORT_NAME base)
# Installed libraries find each other ($ORIGIN) and libtorch (the venv's lib dir, named explicitly:
# CMake leaves directories inside the source tree, where .venv usually is, out of the link path
# RPATH) without LD_LIBRARY_PATH.
set_target_properties(moeq_base moeq_registry PROPERTIES
  INSTALL_RPATH "$ORIGIN;${MOEQ_TORCH_LIB_DIR}" INSTALL_RPATH_USE_LINK_PATH ON)

install(TARGETS moeq_base moeq_registry moeq_sdk EXPORT moeqTargets
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}"
  INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
# Libraries the installed moeq tool runs on that plugins do not link: installed, not exported.
set_target_properties(moeq_kernels moeq_quant PROPERTIES
  INSTALL_RPATH "$ORIGIN;${MOEQ_TORCH_LIB_DIR}" INSTALL_RPATH_USE_LINK_PATH ON)
install(TARGETS moeq_kernels moeq_quant LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}")
install(DIRECTORY "${PROJECT_SOURCE_DIR}/core/include/moeq/core"
                  "${PROJECT_SOURCE_DIR}/registry/include/moeq/registry"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/moeq"
        FILES_MATCHING PATTERN "*.h")
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
