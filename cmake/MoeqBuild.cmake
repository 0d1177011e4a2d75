# Build helpers shared by every moeq target.

# Warnings for moeq's own code (third-party headers are included as SYSTEM).
function(moeq_set_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers>)
endfunction()

# One precompiled <ATen/ATen.h> for all targets that include ATen: it is the bulk of every
# translation unit's compile time. Flags that affect it (standard, -fPIC, torch defines) are global.
add_library(moeq_pch OBJECT "${PROJECT_SOURCE_DIR}/cmake/pch_anchor.cpp")
target_link_libraries(moeq_pch PRIVATE moeq::torch fmt::fmt)
target_precompile_headers(moeq_pch PRIVATE <ATen/ATen.h> <fmt/format.h> <vector> <string>
                          <memory> <optional>)

function(moeq_use_aten_pch target)
  target_precompile_headers(${target} REUSE_FROM moeq_pch)
  get_target_property(_type ${target} TYPE)
  if(_type STREQUAL "EXECUTABLE")
    # Executables would get -fPIE, which does not match the PCH's -fPIC.
    set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE OFF)
    target_compile_options(${target} PRIVATE -fPIC)
  endif()
endfunction()
