# moeq_add_plugin(<name> SOURCES <files>... [LINK_LIBRARIES <libs>...] [OUTPUT_DIRECTORY <dir>]
#                 [NO_INSTALL])
#
# Builds the moeq plugin <name> as libmoeq_plugin_<name>.so: a MODULE library linked against
# moeq::sdk, with hidden visibility and a version script exporting only the entry point
# moeq_get_plugin_info (declared in the sources with MOEQ_PLUGIN(<name>, ...)). The same function
# builds the in-tree plugins and, through find_package(moeq), plugins out of tree.
#
# In tree, plugins are built into the directory an installed moeq searches (<libdir>/moeq/plugins,
# beside libmoeq_registry.so), so `moeq` finds them by name from the build tree too. They are
# installed to ${CMAKE_INSTALL_LIBDIR}/moeq/plugins unless NO_INSTALL is given.
include_guard(GLOBAL)
include(GNUInstallDirs)

function(moeq_add_plugin name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "NO_INSTALL" "OUTPUT_DIRECTORY" "SOURCES;LINK_LIBRARIES")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "moeq_add_plugin(${name}): unknown arguments '${arg_UNPARSED_ARGUMENTS}'")
  endif()
  if(NOT arg_SOURCES)
    message(FATAL_ERROR "moeq_add_plugin(${name}): no SOURCES")
  endif()
  if(NOT name MATCHES "^[A-Za-z0-9_]+$")
    message(FATAL_ERROR "moeq_add_plugin(${name}): a plugin name is letters, digits and '_'")
  endif()

  set(target moeq_plugin_${name})
  add_library(${target} MODULE ${arg_SOURCES})
  target_link_libraries(${target} PRIVATE moeq::sdk ${arg_LINK_LIBRARIES})
  set_target_properties(${target} PROPERTIES
    PREFIX "lib"
    OUTPUT_NAME "moeq_plugin_${name}"
    SUFFIX ".so"
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    LINK_DEPENDS "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/moeq_plugin.map"
    INSTALL_RPATH "$ORIGIN/../.."
    INSTALL_RPATH_USE_LINK_PATH ON)
  target_link_options(${target} PRIVATE
    "LINKER:--version-script=${CMAKE_CURRENT_FUNCTION_LIST_DIR}/moeq_plugin.map"
    "LINKER:--no-undefined")
  # GCC marks some template statics STB_GNU_UNIQUE, which makes glibc refuse to unload the
  # library; plugins do not share such objects with the host (their symbols are hidden anyway).
  target_compile_options(${target} PRIVATE $<$<CXX_COMPILER_ID:GNU>:-fno-gnu-unique>)

  if(arg_OUTPUT_DIRECTORY)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${arg_OUTPUT_DIRECTORY}")
  elseif(DEFINED MOEQ_PLUGIN_BUILD_DIR AND TARGET moeq_registry)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${MOEQ_PLUGIN_BUILD_DIR}")
  endif()
  if(NOT arg_NO_INSTALL)
    install(TARGETS ${target} LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}/moeq/plugins")
  endif()
endfunction()
