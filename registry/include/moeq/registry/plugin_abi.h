// The plugin ABI: the one entry point every moeq plugin exports, and the macro that writes it.
//
// This is the only header a plugin must match exactly. A plugin is a shared object that exports
// one symbol, `moeq_get_plugin_info` (a Boost.DLL alias), returning a `moeq_plugin_info`. The host
// checks, in order, that the file loads, that the symbol exists, that `api_version`, the torch
// version, the C++ ABI and the SDK fingerprint equal its own, and that the callback is set; then it
// calls the callback with its registries (see docs/plugins.md). Nothing registers at load time: no
// static constructors inside a plugin.
//
// Versioning rule (LLVM's PassPlugin): MOEQ_PLUGIN_API_VERSION is bumped whenever a field of
// `moeq_plugin_info` or `moeq_plugin_host` is added, removed or reordered, and whenever the
// registries a plugin registers into change (a registry added, an interface's virtual functions
// extended). `api_version` stays the first field forever, so a host can always read it.
// 2: the pipeline_stages registry (the hard tier's stage overrides).
// 3: sdk_fingerprint. The API version covers this file's structs; the fingerprint (a hash of
//    every public header, generated at configure time) covers the rest of the SDK a plugin
//    compiles against: runtime blocks, options structs, adapters. A plugin built against other
//    headers is refused by name rather than run with another struct layout.
#pragma once

#include <cstdint>
#include <exception>

#include <fmt/core.h>
#include <torch/version.h>
#include <boost/dll/alias.hpp>

#include "moeq/core/error.h"
#include "moeq/registry/sdk_fingerprint.h"

#define MOEQ_PLUGIN_API_VERSION 3

namespace moeq {
class Logger;
class PluginRegistrar;
}  // namespace moeq

// NOLINTBEGIN(readability-identifier-naming): C structs of the ABI, named as C names are.
extern "C" {

// What the host hands to a plugin's registration callback.
struct moeq_plugin_host {
  uint32_t api_version;              // the host's MOEQ_PLUGIN_API_VERSION
  moeq::PluginRegistrar* registrar;  // the host's registries; entries get this plugin's origin
  moeq::Logger* logger;              // the host's logger; plugins never create sinks of their own
  // The error sink: a failing callback reports here and returns 1. No exception crosses the
  // boundary; the host turns the message into "while registering plugin 'x' from 'path': ...".
  void (*report_error)(moeq_plugin_host* host, const char* message) noexcept;
  void* host_context;  // the host's, opaque to plugins
};

// What a plugin exports, through `moeq_get_plugin_info`.
struct moeq_plugin_info {
  uint32_t api_version;       // MOEQ_PLUGIN_API_VERSION when the plugin was built
  const char* name;           // the plugin's name, e.g. "mixtral"; a public key
  const char* version;        // the plugin's own version, e.g. "0.1.0"
  const char* torch_version;  // TORCH_VERSION the plugin was compiled against
  const char* cxx_abi;        // MOEQ_PLUGIN_CXX_ABI, e.g. "gcc-12:cxx11abi=1:fmt=90100"
  // Registers everything the plugin provides; returns 0 on success, 1 after report_error.
  int (*register_fn)(moeq_plugin_host* host) noexcept;
  const char* sdk_fingerprint;  // MOEQ_SDK_FINGERPRINT of the headers the plugin was built with
};

}  // extern "C"
// NOLINTEND(readability-identifier-naming)

// The symbol every plugin exports (a Boost.DLL alias to a `const moeq_plugin_info* ()` function).
#define MOEQ_PLUGIN_ENTRY_POINT "moeq_get_plugin_info"

#define MOEQ_PLUGIN_DETAIL_STR2(x) #x
#define MOEQ_PLUGIN_DETAIL_STR(x) MOEQ_PLUGIN_DETAIL_STR2(x)
#if defined(__clang__)
#define MOEQ_PLUGIN_DETAIL_COMPILER "clang-" MOEQ_PLUGIN_DETAIL_STR(__clang_major__)
#elif defined(__GNUC__)
#define MOEQ_PLUGIN_DETAIL_COMPILER "gcc-" MOEQ_PLUGIN_DETAIL_STR(__GNUC__)
#else
#define MOEQ_PLUGIN_DETAIL_COMPILER "unknown-compiler"
#endif
#if defined(_GLIBCXX_USE_CXX11_ABI)
#define MOEQ_PLUGIN_DETAIL_STDLIB ":cxx11abi=" MOEQ_PLUGIN_DETAIL_STR(_GLIBCXX_USE_CXX11_ABI)
#else
#define MOEQ_PLUGIN_DETAIL_STDLIB ":stdlib=other"
#endif

// The C++ ABI a translation unit is compiled with: compiler and major version, libstdc++'s string
// ABI and fmt's version. Host and plugin must agree on all of it (docs/plugins.md, "ABI promise").
#define MOEQ_PLUGIN_CXX_ABI \
  MOEQ_PLUGIN_DETAIL_COMPILER MOEQ_PLUGIN_DETAIL_STDLIB ":fmt=" MOEQ_PLUGIN_DETAIL_STR(FMT_VERSION)

namespace moeq::detail {

// Runs a plugin's registration function inside the plugin, catching everything: the exception's
// text goes to the host's error sink and the callback returns 1.
template <typename Register>
int run_plugin_register(moeq_plugin_host* host, Register&& register_function) noexcept {
  try {
    register_function(*host->registrar);
    return 0;
  } catch (const moeq::Error& e) {
    host->report_error(host, e.message().c_str());
  } catch (const std::exception& e) {
    host->report_error(host, e.what());
  } catch (...) {
    host->report_error(host, "unknown exception (not derived from std::exception)");
  }
  return 1;
}

}  // namespace moeq::detail

// Writes a plugin's entry point with every field given explicitly. Use MOEQ_PLUGIN; this form
// exists for the loader's tests, which build plugins with wrong versions on purpose.
#define MOEQ_PLUGIN_DETAIL_DEFINE(name, plugin_version, api_version_value, torch_version_value, \
                                  cxx_abi_value, sdk_fingerprint_value, register_function)      \
  namespace {                                                                                   \
  int moeq_plugin_register_##name(moeq_plugin_host* host) noexcept {                            \
    return ::moeq::detail::run_plugin_register(                                                 \
        host, [](::moeq::PluginRegistrar& registrar) { register_function(registrar); });        \
  }                                                                                             \
  constexpr moeq_plugin_info kMoeqPluginInfo_##name = {                                         \
      (api_version_value),    #name,           (plugin_version),                                \
      (torch_version_value),  (cxx_abi_value), &moeq_plugin_register_##name,                    \
      (sdk_fingerprint_value)};                                                                 \
  const moeq_plugin_info* moeq_plugin_get_info_##name() noexcept {                              \
    return &kMoeqPluginInfo_##name;                                                             \
  }                                                                                             \
  }                                                                                             \
  BOOST_DLL_ALIAS(moeq_plugin_get_info_##name, moeq_get_plugin_info)

// Declares a plugin: its name (an identifier, e.g. mixtral), its version string, and the function
// `void register_function(moeq::PluginRegistrar&)` that registers what it provides. The function
// may throw; the macro's callback catches and reports. Use once per plugin, at global scope:
//
//   void register_mixtral(moeq::PluginRegistrar& registrar) {
//     registrar.add_architecture<MixtralForCausalLM>("MixtralForCausalLM");
//   }
//   MOEQ_PLUGIN(mixtral, "0.1.0", register_mixtral)
#define MOEQ_PLUGIN(name, plugin_version, register_function)                              \
  MOEQ_PLUGIN_DETAIL_DEFINE(name, plugin_version, MOEQ_PLUGIN_API_VERSION, TORCH_VERSION, \
                            MOEQ_PLUGIN_CXX_ABI, MOEQ_SDK_FINGERPRINT, register_function)
