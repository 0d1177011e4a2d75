// Claims to be built against another torch.
#include "moeq/registry/plugin.h"

namespace {
void register_nothing(moeq::PluginRegistrar& /*registrar*/) {}
}  // namespace

MOEQ_PLUGIN_DETAIL_DEFINE(torch_mismatch,
                          "1.0.0",
                          MOEQ_PLUGIN_API_VERSION,
                          "1.13.1",
                          MOEQ_PLUGIN_CXX_ABI,
                          MOEQ_SDK_FINGERPRINT,
                          register_nothing)
