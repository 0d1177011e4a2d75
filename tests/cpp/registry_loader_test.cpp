// The plugin loader against tiny real plugins (tests/plugins/): every check has its own message
// naming the file and the values; a failed registration leaves nothing behind; a plugin's library
// stays mapped while anything made from it is alive, and is unmapped after.
#include <gtest/gtest.h>
#include <link.h>
#include <unistd.h>

#include <boost/dll/shared_library.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "io_test_util.h"
#include "moeq/registry/config.h"
#include "moeq/registry/plugin_abi.h"
#include "moeq/registry/plugin_manager.h"

namespace {

namespace fs = std::filesystem;
using moeq::PluginManager;

std::string plugin_path(const std::string& name) {
  return (fs::path(MOEQ_TEST_PLUGIN_DIR) / moeq::plugin_file_name(name))
      .lexically_normal()
      .string();
}

std::string load_error(PluginManager& manager, const std::string& path) {
  try {
    manager.load_file(path);
  } catch (const moeq::Error& e) {
    return e.message();
  }
  return "(no error)";
}

// Whether a shared object with this exact path is mapped into the process.
bool mapped(const std::string& path) {
  struct Search {
    const std::string* path;
    bool found;
  } search{&path, false};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t /*size*/, void* data) {
        auto* s = static_cast<Search*>(data);
        if (info->dlpi_name != nullptr && *s->path == info->dlpi_name) {
          s->found = true;
          return 1;
        }
        return 0;
      },
      &search);
  return search.found;
}

std::string regex_escape(const std::string& text) {
  static const std::regex kSpecial(R"([.^$|()\[\]{}*+?\\])");
  return std::regex_replace(text, kSpecial, R"(\$&)");
}

// Silences the loader's info lines.
class PluginLoaderTest : public ::testing::Test {
 protected:
  moeq::ScopedLogCapture capture_;
};

TEST_F(PluginLoaderTest, GoodPluginRegistersWithOrigins) {
  PluginManager manager;
  const std::string path = plugin_path("good");
  const moeq::LoadedPlugin& plugin = manager.load_file(path);
  EXPECT_EQ(plugin.info().name, "good");
  EXPECT_EQ(plugin.info().version, "1.0.0");
  EXPECT_EQ(plugin.info().torch_version, TORCH_VERSION);
  EXPECT_EQ(plugin.info().cxx_abi, moeq::host_cxx_abi());
  EXPECT_EQ(plugin.info().path, fs::path(path));
  ASSERT_EQ(plugin.registrations().size(), 2U);
  EXPECT_EQ(plugin.registrations()[0].kind, "architecture");
  EXPECT_EQ(plugin.registrations()[0].key, "GoodForCausalLM");
  EXPECT_EQ(plugin.registrations()[1].kind, "module adapter");
  EXPECT_EQ(plugin.registrations()[1].key, "GoodSparseMoeBlock");
  EXPECT_TRUE(capture_.contains("info: load_plugin: loaded plugin 'good' 1.0.0 from " + path +
                                " (2 registrations)"))
      << capture_.text();

  const moeq::Registries& registries = manager.registries();
  EXPECT_EQ(registries.architectures.keys(), std::vector<std::string>{"GoodForCausalLM"});
  EXPECT_EQ(registries.module_adapters.keys(), std::vector<std::string>{"GoodSparseMoeBlock"});
  EXPECT_TRUE(std::regex_match(
      registries.module_adapters.describe("GoodSparseMoeBlock"),
      std::regex("module adapter 'GoodSparseMoeBlock' from plugin 'good' 1\\.0\\.0 \\(" +
                 regex_escape(path) + ", good\\.cpp:[0-9]+\\)")))
      << registries.module_adapters.describe("GoodSparseMoeBlock");
  const moeq::Origin& origin = registries.architectures.get("GoodForCausalLM")->origin;
  EXPECT_EQ(origin.plugin_path, path);
  EXPECT_EQ(origin.plugin_name, "good");
  EXPECT_EQ(origin.plugin_version, "1.0.0");
  EXPECT_EQ(fs::path(origin.file).filename(), "good.cpp");
  EXPECT_GT(origin.line, 0);

  auto adapter = registries.module_adapters.create("GoodSparseMoeBlock");
  EXPECT_EQ(adapter->type_key(), "GoodSparseMoeBlock");
  EXPECT_EQ(adapter->tier(), moeq::Tier::kEasy);
  EXPECT_EQ(adapter->describe(), "test adapter from the good plugin");
  EXPECT_EQ(registries.architectures.create("GoodForCausalLM")->key(), "GoodForCausalLM");
}

TEST_F(PluginLoaderTest, LoadingTheSameFileTwiceReturnsTheLoadedPlugin) {
  PluginManager manager;
  const moeq::LoadedPlugin& first = manager.load_file(plugin_path("good"));
  const moeq::LoadedPlugin& second =
      manager.load_file(fs::path(MOEQ_TEST_PLUGIN_DIR) / "." / "libmoeq_plugin_good.so");
  EXPECT_EQ(&first, &second);
  EXPECT_EQ(manager.plugins().size(), 1U);
}

TEST_F(PluginLoaderTest, MissingFile) {
  PluginManager manager;
  const std::string path = plugin_path("nonexistent");
  EXPECT_EQ(load_error(manager, path), "plugin file '" + path + "' does not exist");
}

TEST_F(PluginLoaderTest, DirectoryIsNotAPlugin) {
  PluginManager manager;
  const std::string path = fs::path(MOEQ_TEST_PLUGIN_DIR).lexically_normal().string();
  EXPECT_EQ(load_error(manager, path), "plugin file '" + path + "' is not a regular file");
}

TEST_F(PluginLoaderTest, NotASharedObject) {
  PluginManager manager;
  const std::string path = plugin_path("not_a_shared_object");
  EXPECT_EQ(load_error(manager, path), "cannot load plugin '" + path + "': invalid ELF header");
}

TEST_F(PluginLoaderTest, MissingEntryPoint) {
  PluginManager manager;
  const std::string path = plugin_path("missing_symbol");
  EXPECT_EQ(load_error(manager, path),
            "plugin '" + path +
                "' does not export the entry point 'moeq_get_plugin_info'; is it a "
                "moeq plugin built with MOEQ_PLUGIN?");
}

TEST_F(PluginLoaderTest, WrongApiVersion) {
  PluginManager manager;
  const std::string path = plugin_path("wrong_api_version");
  EXPECT_EQ(load_error(manager, path),
            "plugin '" + path + "' has plugin API version 999, but this moeq supports version " +
                std::to_string(MOEQ_PLUGIN_API_VERSION));
}

TEST_F(PluginLoaderTest, TorchVersionMismatch) {
  PluginManager manager;
  const std::string path = plugin_path("torch_mismatch");
  EXPECT_EQ(load_error(manager, path),
            "plugin 'torch_mismatch' from '" + path +
                "' was built against torch 1.13.1, but this moeq uses torch " +
                std::string(TORCH_VERSION));
}

TEST_F(PluginLoaderTest, CxxAbiMismatch) {
  PluginManager manager;
  const std::string path = plugin_path("abi_mismatch");
  EXPECT_EQ(load_error(manager, path),
            "plugin 'abi_mismatch' from '" + path +
                "' was built with C++ ABI 'gcc-12:cxx11abi=0:fmt=90100', but this "
                "moeq was built with '" +
                moeq::host_cxx_abi() + "'");
}

TEST_F(PluginLoaderTest, SdkHeadersMismatch) {
  PluginManager manager;
  const std::string path = plugin_path("sdk_mismatch");
  EXPECT_EQ(load_error(manager, path),
            "plugin 'sdk_mismatch' from '" + path +
                "' was built against moeq SDK headers 0123456789abcdef, but this moeq's are " +
                std::string(MOEQ_SDK_FINGERPRINT) +
                "; rebuild the plugin against this moeq (its headers changed since)");
  EXPECT_EQ(std::string(MOEQ_SDK_FINGERPRINT).size(), 16U);
}

TEST_F(PluginLoaderTest, MissingCallback) {
  PluginManager manager;
  const std::string path = plugin_path("no_callback");
  EXPECT_EQ(load_error(manager, path),
            "plugin 'no_callback' from '" + path + "' has no registration callback");
}

TEST_F(PluginLoaderTest, CallbackFailureGetsContextAndRollsBack) {
  PluginManager manager;
  const std::string path = plugin_path("throws_in_register");
  EXPECT_EQ(load_error(manager, path), "while registering plugin 'throws_in_register' from '" +
                                           path +
                                           "': expert count missing from the plugin's table");
  EXPECT_FALSE(manager.registries().architectures.contains("ThrowsForCausalLM"));
  EXPECT_TRUE(manager.plugins().empty());
  EXPECT_FALSE(mapped(path));
}

TEST_F(PluginLoaderTest, DuplicateKeyNamesBothOriginsAndRollsBack) {
  PluginManager manager;
  const std::string good = plugin_path("good");
  const std::string duplicate = plugin_path("duplicate_key");
  manager.load_file(good);
  const std::string error = load_error(manager, duplicate);
  EXPECT_TRUE(std::regex_match(
      error,
      std::regex("while registering plugin 'duplicate_key' from '" + regex_escape(duplicate) +
                 "': module adapter 'GoodSparseMoeBlock' is already registered by plugin 'good' "
                 "1\\.0\\.0 \\(" +
                 regex_escape(good) +
                 ", good\\.cpp:[0-9]+\\); plugin 'duplicate_key' 2\\.0\\.0 \\(" +
                 regex_escape(duplicate) + ", duplicate_key\\.cpp:[0-9]+\\) registers it again")))
      << error;
  // What the failed plugin registered before the duplicate is gone; the good plugin is untouched.
  EXPECT_FALSE(manager.registries().architectures.contains("DuplicateOnlyForCausalLM"));
  EXPECT_EQ(manager.registries().module_adapters.get("GoodSparseMoeBlock")->origin.plugin_name,
            "good");
  EXPECT_EQ(manager.plugins().size(), 1U);
  EXPECT_FALSE(mapped(duplicate));
  EXPECT_TRUE(mapped(good));
}

TEST_F(PluginLoaderTest, PluginNameClash) {
  // The same plugin under another file name.
  const fs::path dir =
      fs::temp_directory_path() / ("moeq_loader_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path copy = dir / "libmoeq_plugin_good_copy.so";
  fs::copy_file(plugin_path("good"), copy, fs::copy_options::overwrite_existing);
  {
    PluginManager manager;
    manager.load_file(plugin_path("good"));
    EXPECT_EQ(load_error(manager, copy.string()), "plugin 'good' from '" + copy.string() +
                                                      "' is already loaded from '" +
                                                      plugin_path("good") + "'");
    // Found by name, a file must declare that name.
    EXPECT_EQ(
        [&] {
          try {
            PluginManager other;
            other.load("good_copy", {dir});
          } catch (const moeq::Error& e) {
            return e.message();
          }
          return std::string("(no error)");
        }(),
        "plugin file '" + copy.string() +
            "' was found by the name 'good_copy' but declares the name 'good'");
  }
  moeq::io::testing::remove_tree(dir);
}

TEST_F(PluginLoaderTest, RegistrationsGoWithTheManager) {
  const std::string path = plugin_path("good");
  {
    PluginManager manager;
    manager.load_file(path);
    EXPECT_TRUE(mapped(path));
  }
  EXPECT_FALSE(mapped(path));
}

TEST_F(PluginLoaderTest, LibraryStaysLoadedWhileAnAdapterFromItIsAlive) {
  const std::string path = plugin_path("good");
  std::shared_ptr<moeq::ModuleAdapter> adapter;
  moeq::ArchitectureRegistry::EntryPtr entry;
  {
    PluginManager manager;
    manager.load_file(path);
    adapter = manager.registries().module_adapters.create("GoodSparseMoeBlock");
    entry = manager.registries().architectures.get("GoodForCausalLM");
  }
  // The manager, its registries and the plugin's registrations are gone; the adapter and the
  // entry still run code from the library.
  EXPECT_TRUE(mapped(path));
  EXPECT_EQ(adapter->describe(), "test adapter from the good plugin");
  adapter.reset();
  EXPECT_TRUE(mapped(path));
  EXPECT_EQ(entry->factory()->describe(), "test architecture from the good plugin");
  entry.reset();
  EXPECT_FALSE(mapped(path));
}

TEST_F(PluginLoaderTest, OnlyTheEntryPointIsExported) {
  boost::dll::shared_library library(plugin_path("good"), boost::dll::load_mode::rtld_local);
  EXPECT_TRUE(library.has(MOEQ_PLUGIN_ENTRY_POINT));
  EXPECT_FALSE(library.has("moeq_test_not_exported"));  // default visibility in the source
  EXPECT_FALSE(library.has("moeq_plugin_get_info_good"));
}

TEST_F(PluginLoaderTest, FindsPluginsByNameOnTheSearchPath) {
  const std::string dir = fs::path(MOEQ_TEST_PLUGIN_DIR).lexically_normal().string();
  EXPECT_EQ(moeq::find_plugin("good", {"/nonexistent", dir}),
            fs::path(dir) / "libmoeq_plugin_good.so");
  PluginManager manager;
  EXPECT_EQ(manager.load("good", {dir}).info().name, "good");
  try {
    moeq::find_plugin("mixtral", {"/nonexistent/a", "/nonexistent/b"});
    FAIL();
  } catch (const moeq::Error& e) {
    EXPECT_EQ(e.message(),
              "plugin 'mixtral' not found: no libmoeq_plugin_mixtral.so in /nonexistent/a, "
              "/nonexistent/b (add "
              "its directory to plugin_path in the recipe or to MOEQ_PLUGIN_PATH)");
  }
  try {
    moeq::find_plugin("bad name", {dir});
    FAIL();
  } catch (const moeq::Error& e) {
    EXPECT_EQ(e.message(),
              "'bad name' is neither a plugin path nor a plugin name (letters, digits and '_')");
  }
  EXPECT_TRUE(moeq::is_plugin_path("./libmoeq_plugin_good.so"));
  EXPECT_TRUE(moeq::is_plugin_path("libmoeq_plugin_good.so"));
  EXPECT_FALSE(moeq::is_plugin_path("good"));
}

TEST_F(PluginLoaderTest, SearchPathOrder) {
  const char* previous = std::getenv("MOEQ_PLUGIN_PATH");
  const std::string saved = previous == nullptr ? "" : previous;
  ::setenv("MOEQ_PLUGIN_PATH", "/env/a::/env/b", 1);
  const std::vector<fs::path> dirs = moeq::plugin_search_path({"/config/a"});
  const std::vector<fs::path> expected = {"/config/a", "/env/a", "/env/b",
                                          moeq::default_plugin_dir()};
  EXPECT_EQ(dirs, expected);
  if (previous == nullptr) {
    ::unsetenv("MOEQ_PLUGIN_PATH");
  } else {
    ::setenv("MOEQ_PLUGIN_PATH", saved.c_str(), 1);
  }
  // Beside libmoeq_registry.so, as installed: <libdir>/moeq/plugins.
  EXPECT_EQ(moeq::default_plugin_dir().filename(), "plugins");
  EXPECT_EQ(moeq::default_plugin_dir().parent_path().filename(), "moeq");
}

TEST_F(PluginLoaderTest, RecipePluginsLoadInOrderAndErrorsSayWhereTheyAreListed) {
  const std::string dir = fs::path(MOEQ_TEST_PLUGIN_DIR).lexically_normal().string();
  {
    const moeq::Recipe recipe = moeq::parse_recipe(
        "plugin_path: [" + dir + "]\nplugins:\n  - good\n", "recipe.yaml", "/base");
    PluginManager manager;
    moeq::load_plugins(manager, recipe);
    ASSERT_EQ(manager.plugins().size(), 1U);
    EXPECT_EQ(manager.plugins()[0]->info().name, "good");
  }
  const moeq::Recipe recipe =
      moeq::parse_recipe("plugins:\n  - " + dir +
                             "/libmoeq_plugin_good.so\n  - ./libmoeq_plugin_wrong_api_version.so\n",
                         "recipe.yaml", dir);
  PluginManager manager;
  try {
    moeq::load_plugins(manager, recipe);
    FAIL();
  } catch (const moeq::Error& e) {
    EXPECT_EQ(e.message(), "recipe.yaml:3:5: plugins[1]: plugin '" +
                               plugin_path("wrong_api_version") +
                               "' has plugin API version 999, but this moeq supports version " +
                               std::to_string(MOEQ_PLUGIN_API_VERSION));
  }
  EXPECT_EQ(manager.plugins().size(), 1U);
}

}  // namespace
