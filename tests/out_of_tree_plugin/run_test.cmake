# ctest registry_out_of_tree_plugin (cmake -P): installs the moeq build to a temporary prefix,
# configures and builds this folder against it (find_package(moeq) + moeq_add_plugin), installs
# the plugin into the prefix, and loads it with the installed CLI, by path and by name.
# Inputs: MOEQ_BUILD_DIR, MOEQ_SOURCE_DIR, WORK_DIR, CMAKE_GENERATOR, CMAKE_CXX_COMPILER.
cmake_minimum_required(VERSION 3.25)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " command "${ARGN}")
    message(FATAL_ERROR "out-of-tree plugin: '${command}' failed (${rc}):\n${out}\n${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()

function(expect_in text needle)
  string(FIND "${text}" "${needle}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "out-of-tree plugin: expected '${needle}' in:\n${text}")
  endif()
endfunction()

set(prefix "${WORK_DIR}/prefix")
set(build "${WORK_DIR}/build")
file(REMOVE_RECURSE "${WORK_DIR}")

run("${CMAKE_COMMAND}" --install "${MOEQ_BUILD_DIR}" --prefix "${prefix}")
run("${CMAKE_COMMAND}" -S "${MOEQ_SOURCE_DIR}/tests/out_of_tree_plugin" -B "${build}"
    -G "${CMAKE_GENERATOR}" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}"
    "-DCMAKE_PREFIX_PATH=${prefix}" "-DCMAKE_INSTALL_PREFIX=${prefix}")
run("${CMAKE_COMMAND}" --build "${build}")

set(plugin "${build}/libmoeq_plugin_out_of_tree.so")
run("${prefix}/bin/moeq" plugins --plugin "${plugin}")
expect_in("${out}" "plugin 'out_of_tree' 0.1.0 from ${plugin}")
expect_in("${out}" "OutOfTreeSparseMoeBlock")
expect_in("${out}" "[easy] built out of tree")

# Installed beside moeq, it is found by name on the install's plugin directory.
run("${CMAKE_COMMAND}" --install "${build}")
run("${prefix}/bin/moeq" plugins --plugin out_of_tree)
expect_in("${out}" "plugin 'out_of_tree' 0.1.0 from ${prefix}/lib/moeq/plugins/libmoeq_plugin_out_of_tree.so")
message(STATUS "out-of-tree plugin: built against ${prefix} and loaded")
