// Claims to be built against other moeq headers (an older checkout's, say).
#include "moeq/registry/plugin.h"

namespace {
void register_nothing(moeq::PluginRegistrar& /*registrar*/) {}
}  // namespace

MOEQ_PLUGIN_DETAIL_DEFINE(sdk_mismatch,
                          "1.0.0",
                          MOEQ_PLUGIN_API_VERSION,
                          TORCH_VERSION,
                          MOEQ_PLUGIN_CXX_ABI,
                          "0123456789abcdef",
                          register_nothing)
