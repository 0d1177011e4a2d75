// Everything a plugin's source includes: the ABI (MOEQ_PLUGIN), the registrar, the interfaces it
// implements, and the host's logger.
//
//   #include "moeq/registry/plugin.h"
//
//   class MixtralSparseMoeBlockAdapter : public moeq::ModuleAdapter { ... };
//
//   void register_mixtral(moeq::PluginRegistrar& registrar) {
//     registrar.add_module_adapter<MixtralSparseMoeBlockAdapter>("MixtralSparseMoeBlock");
//   }
//   MOEQ_PLUGIN(mixtral, "0.1.0", register_mixtral)
//
// Build it with moeq_add_plugin(mixtral SOURCES mixtral.cpp) (cmake/MoeqPlugin.cmake).
#pragma once

#include "moeq/core/error.h"
#include "moeq/core/log.h"
#include "moeq/registry/architecture_builder.h"
#include "moeq/registry/checkpoint_mapping.h"
#include "moeq/registry/module_adapter.h"
#include "moeq/registry/plugin_abi.h"
#include "moeq/registry/plugin_registrar.h"
#include "moeq/registry/source_format.h"
