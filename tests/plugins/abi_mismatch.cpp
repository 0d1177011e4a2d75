// Claims another C++ ABI (the pre-C++11 std::string of libstdc++).
#include "moeq/registry/plugin.h"

namespace {
void register_nothing(moeq::PluginRegistrar& /*registrar*/) {}
}  // namespace

MOEQ_PLUGIN_DETAIL_DEFINE(abi_mismatch,
                          "1.0.0",
                          MOEQ_PLUGIN_API_VERSION,
                          TORCH_VERSION,
                          "gcc-12:cxx11abi=0:fmt=90100",
                          MOEQ_SDK_FINGERPRINT,
                          register_nothing)
