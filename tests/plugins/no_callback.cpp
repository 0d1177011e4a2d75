// A well-versioned entry point whose registration callback is null (written by hand, as the
// MOEQ_PLUGIN macro always sets it).
#include "moeq/registry/plugin_abi.h"

namespace {
constexpr moeq_plugin_info kInfo = {MOEQ_PLUGIN_API_VERSION, "no_callback",       "1.0.0",
                                    TORCH_VERSION,           MOEQ_PLUGIN_CXX_ABI, nullptr,
                                    MOEQ_SDK_FINGERPRINT};
const moeq_plugin_info* get_info() noexcept {
  return &kInfo;
}
}  // namespace

BOOST_DLL_ALIAS(get_info, moeq_get_plugin_info)
