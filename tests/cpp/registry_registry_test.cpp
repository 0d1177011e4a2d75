// Registry<Factory>: origins, duplicate keys naming both origins, RAII deregistration, lookups,
// and the keep-alive an entry and everything made from it hold.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "moeq/registry/registries.h"

namespace {

using moeq::ModuleAdapter;
using moeq::ModuleAdapterRegistry;
using moeq::Origin;

class FakeAdapter final : public ModuleAdapter {
 public:
  explicit FakeAdapter(std::string key, bool* destroyed = nullptr)
      : key_(std::move(key)), destroyed_(destroyed) {}
  ~FakeAdapter() override {
    if (destroyed_ != nullptr) {
      *destroyed_ = true;
    }
  }
  std::string type_key() const override { return key_; }
  moeq::Tier tier() const override { return moeq::Tier::kEasy; }
  std::string describe() const override { return "fake"; }

 private:
  std::string key_;
  bool* destroyed_;
};

moeq::ModuleAdapterFactory make_factory(std::string key) {
  return [key] { return std::make_unique<FakeAdapter>(key); };
}

Origin plugin_origin(std::string name, std::string version, std::string file, int line) {
  return Origin{"/plugins/libmoeq_plugin_" + name + ".so", name, std::move(version),
                std::move(file), line};
}

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const moeq::Error& e) {
    return e.message();
  }
  return "(no error)";
}

TEST(RegistryTemplateTest, AddFindKeysDescribe) {
  ModuleAdapterRegistry registry("module adapter");
  auto mixtral =
      registry.add("MixtralSparseMoeBlock", make_factory("MixtralSparseMoeBlock"),
                   plugin_origin("mixtral", "0.1.0", "/src/plugins/mixtral/mixtral.cpp", 12));
  auto qwen = registry.add("Qwen2MoeSparseMoeBlock", make_factory("Qwen2MoeSparseMoeBlock"),
                           Origin{"", "", "", "/src/adapters/builtin.cpp", 7});
  EXPECT_EQ(registry.keys(),
            (std::vector<std::string>{"MixtralSparseMoeBlock", "Qwen2MoeSparseMoeBlock"}));
  EXPECT_EQ(registry.size(), 2U);
  EXPECT_TRUE(registry.contains("MixtralSparseMoeBlock"));
  EXPECT_EQ(registry.find("DeepseekV3MoE"), nullptr);
  EXPECT_EQ(registry.describe("MixtralSparseMoeBlock"),
            "module adapter 'MixtralSparseMoeBlock' from plugin 'mixtral' 0.1.0 "
            "(/plugins/libmoeq_plugin_mixtral.so, mixtral.cpp:12)");
  EXPECT_EQ(registry.describe("Qwen2MoeSparseMoeBlock"),
            "module adapter 'Qwen2MoeSparseMoeBlock' from moeq (builtin.cpp:7)");
  EXPECT_EQ(registry.create("MixtralSparseMoeBlock")->type_key(), "MixtralSparseMoeBlock");
}

TEST(RegistryTemplateTest, DuplicateKeyNamesBothOrigins) {
  ModuleAdapterRegistry registry("module adapter");
  auto first = registry.add("MixtralSparseMoeBlock", make_factory("a"),
                            plugin_origin("mixtral", "0.1.0", "mixtral.cpp", 12));
  EXPECT_EQ(
      error_of([&] {
        auto second =
            registry.add("MixtralSparseMoeBlock", make_factory("b"),
                         plugin_origin("my_mixtral", "2.0", "/home/me/my_mixtral.cpp", 40));
      }),
      "module adapter 'MixtralSparseMoeBlock' is already registered by plugin 'mixtral' 0.1.0 "
      "(/plugins/libmoeq_plugin_mixtral.so, mixtral.cpp:12); plugin 'my_mixtral' 2.0 "
      "(/plugins/libmoeq_plugin_my_mixtral.so, my_mixtral.cpp:40) registers it again");
  // The first registration is untouched.
  EXPECT_EQ(registry.create("MixtralSparseMoeBlock")->type_key(), "a");
}

TEST(RegistryTemplateTest, HandleDeregistersOnDestruction) {
  ModuleAdapterRegistry registry("module adapter");
  {
    auto handle = registry.add("K", make_factory("K"), Origin{});
    EXPECT_TRUE(registry.contains("K"));
    moeq::RegistrationHandle moved = std::move(handle);
    EXPECT_FALSE(
        handle.active());  // NOLINT(bugprone-use-after-move): checking the moved-from state
    EXPECT_TRUE(moved.active());
    EXPECT_TRUE(registry.contains("K"));
  }
  EXPECT_FALSE(registry.contains("K"));
  // The key is free again.
  auto again = registry.add("K", make_factory("K2"), Origin{});
  EXPECT_EQ(registry.create("K")->type_key(), "K2");
  again.reset();
  EXPECT_FALSE(registry.contains("K"));
  EXPECT_TRUE(registry.keys().empty());
}

TEST(RegistryTemplateTest, HandleMayOutliveRegistry) {
  auto registry = std::make_unique<ModuleAdapterRegistry>("module adapter");
  auto handle = registry->add("K", make_factory("K"), Origin{});
  registry.reset();
  handle.reset();  // nothing to remove any more; must not touch the destroyed registry
  SUCCEED();
}

TEST(RegistryTemplateTest, UnknownKeyListsKnownAndSuggests) {
  ModuleAdapterRegistry registry("module adapter");
  auto a = registry.add("MixtralSparseMoeBlock", make_factory("a"), Origin{});
  auto b = registry.add("Qwen2MoeSparseMoeBlock", make_factory("b"), Origin{});
  EXPECT_EQ(error_of([&] { registry.get("MixtralSparseMoeBlok"); }),
            "no module adapter is registered for 'MixtralSparseMoeBlok' (did you mean "
            "'MixtralSparseMoeBlock'?); registered: MixtralSparseMoeBlock, Qwen2MoeSparseMoeBlock");
  EXPECT_EQ(
      error_of([&] { registry.get("DeepseekV3MoE"); }),
      "no module adapter is registered for 'DeepseekV3MoE'; registered: MixtralSparseMoeBlock, "
      "Qwen2MoeSparseMoeBlock");
  ModuleAdapterRegistry empty("module adapter");
  EXPECT_EQ(error_of([&] { empty.create("X"); }),
            "no module adapter is registered for 'X'; registered: none");
}

TEST(RegistryTemplateTest, RejectsEmptyKeyEmptyFactoryAndNullProduct) {
  ModuleAdapterRegistry registry("module adapter");
  const Origin origin = plugin_origin("p", "1", "p.cpp", 3);
  EXPECT_EQ(error_of([&] { auto h = registry.add("", make_factory("x"), origin); }),
            "module adapter: an empty key registered by plugin 'p' 1 "
            "(/plugins/libmoeq_plugin_p.so, p.cpp:3)");
  EXPECT_EQ(
      error_of([&] { auto h = registry.add("K", moeq::ModuleAdapterFactory(), origin); }),
      "module adapter 'K': the factory registered by plugin 'p' 1 (/plugins/libmoeq_plugin_p.so, "
      "p.cpp:3) is empty");
  auto handle = registry.add(
      "Null", [] { return std::unique_ptr<ModuleAdapter>(); }, origin);
  EXPECT_EQ(error_of([&] { registry.create("Null"); }),
            "module adapter 'Null': the factory registered by plugin 'p' 1 "
            "(/plugins/libmoeq_plugin_p.so, "
            "p.cpp:3) returned null");
}

// What an entry keeps alive (a plugin's library, in real use) is released only after the entry
// and every object made from it are gone, and after the object's destructor ran.
TEST(RegistryTemplateTest, ObjectsKeepTheirEntryAlive) {
  bool released = false;
  bool object_destroyed = false;
  bool released_before_object = false;
  std::shared_ptr<const void> keep_alive(new int(0), [&](const void* p) {
    released_before_object = !object_destroyed;
    released = true;
    delete static_cast<const int*>(p);
  });
  ModuleAdapterRegistry registry("module adapter");
  auto handle = registry.add(
      "K", [&] { return std::make_unique<FakeAdapter>("K", &object_destroyed); }, Origin{},
      keep_alive);
  keep_alive.reset();
  std::shared_ptr<ModuleAdapter> adapter = registry.create("K");
  auto entry = registry.find("K");
  handle.reset();
  EXPECT_FALSE(registry.contains("K"));
  EXPECT_FALSE(released);
  entry.reset();
  EXPECT_FALSE(released);  // the adapter still holds it
  EXPECT_EQ(adapter->type_key(), "K");
  adapter.reset();
  EXPECT_TRUE(object_destroyed);
  EXPECT_TRUE(released);
  EXPECT_FALSE(released_before_object);
}

TEST(RegistryTemplateTest, TierNames) {
  EXPECT_EQ(moeq::to_string(moeq::Tier::kEasy), "easy");
  EXPECT_EQ(moeq::to_string(moeq::Tier::kMid), "mid");
  EXPECT_EQ(moeq::to_string(moeq::Tier::kHard), "hard");
}

}  // namespace
