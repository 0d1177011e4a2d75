# ctest registry_out_of_tree_olmoe_parity (cmake -P): the contributor guide's example plugin
# (docs/examples/olmoe) as a new contributor builds it: install moeq to a temporary prefix,
# configure and build the example against it (find_package(moeq) + moeq_add_plugin, nothing from
# the source tree), then run its parity test (test_parity.py) with the installed CLI.
# Inputs: MOEQ_BUILD_DIR, MOEQ_SOURCE_DIR, WORK_DIR, CMAKE_GENERATOR, CMAKE_CXX_COMPILER,
# MOEQ_PYTHON (the Python with torch and transformers that moeq was built with), optionally
# CMAKE_CXX_COMPILER_LAUNCHER (moeq's ccache, so a rerun does not recompile the example).
cmake_minimum_required(VERSION 3.25)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " command "${ARGN}")
    message(FATAL_ERROR "olmoe example: '${command}' failed (${rc}):\n${out}\n${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()

set(prefix "${WORK_DIR}/prefix")
set(launcher)
if(CMAKE_CXX_COMPILER_LAUNCHER)
  set(launcher "-DCMAKE_CXX_COMPILER_LAUNCHER=${CMAKE_CXX_COMPILER_LAUNCHER}")
endif()
set(build "${WORK_DIR}/build")
file(REMOVE_RECURSE "${WORK_DIR}")

run("${CMAKE_COMMAND}" --install "${MOEQ_BUILD_DIR}" --prefix "${prefix}")
run("${CMAKE_COMMAND}" -S "${MOEQ_SOURCE_DIR}/docs/examples/olmoe" -B "${build}"
    -G "${CMAKE_GENERATOR}" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}"
    "-DCMAKE_PREFIX_PATH=${prefix}" ${launcher})
run("${CMAKE_COMMAND}" --build "${build}" --parallel 1)

set(plugin "${build}/libmoeq_plugin_olmoe.so")
# Remote code is imported from a modules cache: keep it in the work directory.
run("${CMAKE_COMMAND}" -E env "HF_MODULES_CACHE=${WORK_DIR}/hf_modules" HF_HUB_OFFLINE=1
    "${MOEQ_PYTHON}" "${MOEQ_SOURCE_DIR}/docs/examples/olmoe/test_parity.py"
    --moeq "${prefix}/bin/moeq" --plugin "${plugin}" --work "${WORK_DIR}/parity")
message(STATUS "olmoe example: built against ${prefix}\n${out}")
