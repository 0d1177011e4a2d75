// Claims a plugin API version this moeq does not support.
#include "moeq/registry/plugin.h"

namespace {
void register_nothing(moeq::PluginRegistrar& /*registrar*/) {}
}  // namespace

MOEQ_PLUGIN_DETAIL_DEFINE(wrong_api_version,
                          "1.0.0",
                          999,
                          TORCH_VERSION,
                          MOEQ_PLUGIN_CXX_ABI,
                          MOEQ_SDK_FINGERPRINT,
                          register_nothing)
