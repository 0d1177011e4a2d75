#include "moeq/registry/plugin_manager.h"

#include <dlfcn.h>

#include <boost/dll/shared_library.hpp>

#include <algorithm>
#include <cstdlib>
#include <system_error>

#include "moeq/registry/declared_model.h"
#include "moeq/registry/plugin_abi.h"

namespace moeq {

namespace fs = std::filesystem;

std::string host_torch_version() {
  return TORCH_VERSION;
}
std::string host_cxx_abi() {
  return MOEQ_PLUGIN_CXX_ABI;
}

std::string plugin_file_name(std::string_view name) {
  return fmt::format("libmoeq_plugin_{}.so", name);
}

namespace {

// An address inside libmoeq_registry, for dladdr.
void location_anchor() {}

std::string text_or_empty(const char* text) {
  return text == nullptr ? std::string() : std::string(text);
}

// The plugin's registration callback reports failures here (moeq_plugin_host::report_error).
void collect_error(moeq_plugin_host* host, const char* message) noexcept {
  try {
    auto& sink = *static_cast<std::string*>(host->host_context);
    if (!sink.empty()) {
      sink += "; ";
    }
    sink += message == nullptr ? "(no message)" : message;
  } catch (
      ...) {  // NOLINT(bugprone-empty-catch): out of memory while reporting; nothing left to do
  }
}

bool valid_plugin_name(std::string_view name) {
  if (name.empty()) {
    return false;
  }
  for (const char c : name) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) {
      return false;
    }
  }
  return true;
}

}  // namespace

fs::path default_plugin_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&location_anchor), &info) == 0 || info.dli_fname == nullptr) {
    return {};
  }
  std::error_code ec;
  fs::path library = fs::canonical(info.dli_fname, ec);
  if (ec) {
    library = fs::absolute(info.dli_fname, ec);
  }
  return library.parent_path() / "moeq" / "plugins";
}

int64_t load_default_plugins(PluginManager& manager) {
  const fs::path dir = default_plugin_dir();
  std::error_code ec;
  MOEQ_CHECK(!dir.empty() && fs::is_directory(dir, ec),
             "moeq's plugin directory '{}' does not exist: the in-tree plugins were not built or "
             "installed (list plugins in the recipe, or set MOEQ_PLUGIN_PATH)",
             dir.string());
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto name = entry.path().filename().string();
    if (entry.is_regular_file() && name.starts_with("libmoeq_plugin_") && name.ends_with(".so")) {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  for (const auto& file : files) {
    manager.load_file(file);
  }
  return static_cast<int64_t>(files.size());
}

std::vector<fs::path> plugin_search_path(const std::vector<fs::path>& configured) {
  std::vector<fs::path> dirs = configured;
  if (const char* env = std::getenv("MOEQ_PLUGIN_PATH"); env != nullptr) {
    std::string_view rest(env);
    while (!rest.empty()) {
      const std::size_t colon = rest.find(':');
      const std::string_view entry = rest.substr(0, colon);
      if (!entry.empty()) {
        dirs.emplace_back(entry);
      }
      rest = colon == std::string_view::npos ? std::string_view() : rest.substr(colon + 1);
    }
  }
  if (fs::path builtin = default_plugin_dir(); !builtin.empty()) {
    dirs.push_back(std::move(builtin));
  }
  return dirs;
}

bool is_plugin_path(std::string_view spec) {
  return spec.find('/') != std::string_view::npos ||
         (spec.size() >= 3 && spec.substr(spec.size() - 3) == ".so") ||
         is_declared_plugin_path(spec);
}

fs::path find_plugin(std::string_view name, const std::vector<fs::path>& search_path) {
  MOEQ_CHECK(valid_plugin_name(name),
             "'{}' is neither a plugin path nor a plugin name (letters, digits and '_')", name);
  const std::string file_name = plugin_file_name(name);
  std::vector<std::string> looked_in;
  for (const fs::path& dir : search_path) {
    std::error_code ec;
    fs::path candidate = dir / file_name;
    if (fs::is_regular_file(candidate, ec)) {
      return candidate;
    }
    looked_in.push_back(dir.string());
  }
  MOEQ_FAIL(
      "plugin '{}' not found: no {} in {} (add its directory to plugin_path in the recipe or "
      "to MOEQ_PLUGIN_PATH)",
      name, file_name, looked_in.empty() ? "an empty search path" : detail::join_keys(looked_in));
}

PluginManager::PluginManager(Logger& logger) : logger_(logger) {}

PluginManager::~PluginManager() {
  while (!plugins_.empty()) {
    plugins_.pop_back();
  }
}

std::vector<const LoadedPlugin*> PluginManager::plugins() const {
  std::vector<const LoadedPlugin*> result;
  result.reserve(plugins_.size());
  for (const auto& plugin : plugins_) {
    result.push_back(plugin.get());
  }
  return result;
}

const LoadedPlugin& PluginManager::load(std::string_view spec,
                                        const std::vector<fs::path>& search_path) {
  if (is_plugin_path(spec)) {
    return load_impl(fs::path(spec), {});
  }
  return load_impl(find_plugin(spec, search_path), spec);
}

const LoadedPlugin& PluginManager::load_file(const fs::path& file) {
  return load_impl(file, {});
}

const LoadedPlugin& PluginManager::load_impl(const fs::path& file, std::string_view expected_name) {
  std::error_code ec;
  fs::path path = fs::absolute(file, ec).lexically_normal();
  if (ec) {
    path = file;
  }
  // 1. The file exists and loads.
  MOEQ_CHECK(fs::exists(path, ec), "plugin file '{}' does not exist", path.string());
  MOEQ_CHECK(fs::is_regular_file(path, ec), "plugin file '{}' is not a regular file",
             path.string());
  for (const auto& loaded : plugins_) {
    if (fs::equivalent(loaded->info_.path, path, ec)) {
      MOEQ_CHECK(expected_name.empty() || loaded->info_.name == expected_name,
                 "plugin file '{}' was found by the name '{}' but declares the name '{}'",
                 path.string(), expected_name, loaded->info_.name);
      logger_.debug("load_plugin: plugin '{}' from {} is already loaded", loaded->info_.name,
                    path.string());
      return *loaded;
    }
  }
  if (is_declared_plugin_path(path.string())) {
    return load_declared(path, expected_name);
  }

  auto library = std::make_shared<boost::dll::shared_library>();
  dlerror();  // clear any earlier message
  std::error_code load_error;
  library->load(path, boost::dll::load_mode::rtld_local | boost::dll::load_mode::rtld_now,
                load_error);
  if (load_error) {
    std::string why = text_or_empty(dlerror());
    if (const std::string prefix = path.string() + ": "; why.starts_with(prefix)) {
      why.erase(0, prefix.size());
    }
    MOEQ_FAIL("cannot load plugin '{}': {}", path.string(),
              why.empty() ? load_error.message() : why);
  }

  // 2. The entry point exists.
  MOEQ_CHECK(library->has(MOEQ_PLUGIN_ENTRY_POINT),
             "plugin '{}' does not export the entry point '{}'; is it a moeq plugin built with "
             "MOEQ_PLUGIN?",
             path.string(), MOEQ_PLUGIN_ENTRY_POINT);
  auto& get_info = library->get_alias<const moeq_plugin_info*()>(MOEQ_PLUGIN_ENTRY_POINT);
  const moeq_plugin_info* info = get_info();
  MOEQ_CHECK(info != nullptr, "plugin '{}': {}() returned null", path.string(),
             MOEQ_PLUGIN_ENTRY_POINT);

  // 3. The API version is the host's; only then is the rest of the struct's layout known.
  MOEQ_CHECK(info->api_version == MOEQ_PLUGIN_API_VERSION,
             "plugin '{}' has plugin API version {}, but this moeq supports version {}",
             path.string(), info->api_version, MOEQ_PLUGIN_API_VERSION);
  PluginInfo plugin_info{path,
                         text_or_empty(info->name),
                         text_or_empty(info->version),
                         text_or_empty(info->torch_version),
                         text_or_empty(info->cxx_abi),
                         text_or_empty(info->sdk_fingerprint)};
  const std::string& name = plugin_info.name;
  MOEQ_CHECK(valid_plugin_name(name),
             "plugin '{}' declares an invalid name '{}' (letters, digits and '_')", path.string(),
             name);
  MOEQ_CHECK(expected_name.empty() || name == expected_name,
             "plugin file '{}' was found by the name '{}' but declares the name '{}'",
             path.string(), expected_name, name);

  // 4. torch and the C++ ABI are the host's.
  MOEQ_CHECK(plugin_info.torch_version == host_torch_version(),
             "plugin '{}' from '{}' was built against torch {}, but this moeq uses torch {}", name,
             path.string(), plugin_info.torch_version, host_torch_version());
  MOEQ_CHECK(plugin_info.cxx_abi == host_cxx_abi(),
             "plugin '{}' from '{}' was built with C++ ABI '{}', but this moeq was built with '{}'",
             name, path.string(), plugin_info.cxx_abi, host_cxx_abi());
  // The same moeq headers (every options struct and block a plugin compiles against).
  MOEQ_CHECK(plugin_info.sdk_fingerprint == MOEQ_SDK_FINGERPRINT,
             "plugin '{}' from '{}' was built against moeq SDK headers {}, but this moeq's are {}; "
             "rebuild the plugin against this moeq (its headers changed since)",
             name, path.string(), plugin_info.sdk_fingerprint, MOEQ_SDK_FINGERPRINT);

  // 5. The callback is set.
  MOEQ_CHECK(info->register_fn != nullptr, "plugin '{}' from '{}' has no registration callback",
             name, path.string());
  for (const auto& loaded : plugins_) {
    MOEQ_CHECK(loaded->info_.name != name, "plugin '{}' from '{}' is already loaded from '{}'",
               name, path.string(), loaded->info_.path.string());
  }

  // Registration. On failure `plugin` goes out of scope: its handles remove what it registered,
  // then the library is released.
  auto plugin = std::make_unique<LoadedPlugin>();
  plugin->library_ = library;
  plugin->info_ = plugin_info;
  std::string error;
  {
    PluginRegistrar registrar(registries_, logger_,
                              Origin{path.string(), name, plugin_info.version, {}, 0}, library,
                              plugin->handles_, plugin->records_);
    moeq_plugin_host host{MOEQ_PLUGIN_API_VERSION, &registrar, &logger_, &collect_error, &error};
    const int status = info->register_fn(&host);
    if (status != 0 && error.empty()) {
      error =
          fmt::format("the registration callback returned {} without reporting an error", status);
    }
  }
  if (!error.empty()) {
    MOEQ_FAIL("while registering plugin '{}' from '{}': {}", name, path.string(), error);
  }
  logger_.info("load_plugin: loaded plugin '{}' {} from {} ({} registrations)", name,
               plugin_info.version, path.string(), plugin->records_.size());
  plugins_.push_back(std::move(plugin));
  return *plugins_.back();
}

const LoadedPlugin& PluginManager::load_declared(const fs::path& path,
                                                 std::string_view expected_name) {
  // A YAML file of declared models (declared_model.h): no library, the same registries.
  const DeclaredPlugin declared = load_declared_plugin(path);
  const std::string& name = declared.name;
  MOEQ_CHECK(expected_name.empty() || name == expected_name,
             "plugin file '{}' was found by the name '{}' but declares the name '{}'",
             path.string(), expected_name, name);
  for (const auto& loaded : plugins_) {
    MOEQ_CHECK(loaded->info_.name != name, "plugin '{}' from '{}' is already loaded from '{}'",
               name, path.string(), loaded->info_.path.string());
  }
  auto plugin = std::make_unique<LoadedPlugin>();
  plugin->info_ = PluginInfo{path, name, declared.version, host_torch_version(),
                             "declared in YAML, no compiled code"};
  try {
    PluginRegistrar registrar(registries_, logger_,
                              Origin{path.string(), name, declared.version, {}, 0}, nullptr,
                              plugin->handles_, plugin->records_);
    register_declared_plugin(declared, registrar);
  } catch (const Error& e) {
    // `plugin` goes out of scope: its handles remove what it registered.
    detail::throw_error(e.file(), e.line(),
                        fmt::format("while registering plugin '{}' from '{}': {}", name,
                                    path.string(), e.message()));
  }
  logger_.info("load_plugin: loaded declared plugin '{}' {} from {} ({} registrations)", name,
               declared.version, path.string(), plugin->records_.size());
  plugins_.push_back(std::move(plugin));
  return *plugins_.back();
}

}  // namespace moeq
