// ModuleAdapter and Tier are declared with the pipeline that calls them (core/pipeline); this
// header keeps the registry's include path for plugins.
#pragma once

#include <moeq/pipeline/module_adapter.h>
