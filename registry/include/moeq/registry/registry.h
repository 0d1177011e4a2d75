// Registry<Factory>: a string key -> factory map with explicit semantics (c10's Registry,
// TORCH_LIBRARY's origins, RegistrationHandleRAII):
//   - every entry records its origin: the plugin file, the plugin's name and version, and the
//     source file and line that registered it;
//   - a duplicate key is a moeq::Error that names both origins; nothing is replaced silently;
//   - add() returns an RAII handle that removes the entry when destroyed;
//   - entries are handed out as shared_ptr<const Entry>, and an entry keeps the library that
//     registered it loaded (its `keep_alive`), so a factory never outlives its code.
//
// Plugins never call add() themselves: they register through PluginRegistrar, whose code lives in
// libmoeq_registry, so every control block and deleter that outlives a plugin call is host code.
#pragma once

#include <boost/config.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "moeq/core/error.h"

namespace moeq {

// The source file and line of a call: as a defaulted parameter (`SourceLocation where = {}`), the
// caller's. std::source_location would do, but clang 14 (clang-tidy, the fuzzers) lacks it.
struct SourceLocation {
  // NOLINTNEXTLINE(google-explicit-constructor): built implicitly from `{}` at the call site
  constexpr SourceLocation(const char* file_name = __builtin_FILE(),
                           int line_number = __builtin_LINE())
      : file(file_name), line(line_number) {}
  const char* file;
  int line;
};

// Where a registry entry came from.
struct Origin {
  std::string plugin_path;     // the shared object; empty for code built into moeq
  std::string plugin_name;     // empty for code built into moeq
  std::string plugin_version;  // empty for code built into moeq
  std::string file;            // the source file that registered the entry (__FILE__)
  int line = 0;                // ... and its line

  bool builtin() const { return plugin_path.empty(); }
  // "plugin 'good' 1.0.0 (/path/libmoeq_plugin_good.so, good.cpp:31)", or "moeq (file.cpp:31)".
  std::string to_string() const;
};

// Deregisters on destruction (c10's RegistrationHandleRAII). Safe to outlive its registry.
class BOOST_SYMBOL_VISIBLE RegistrationHandle {
 public:
  RegistrationHandle() = default;
  explicit RegistrationHandle(std::function<void()> remove) : remove_(std::move(remove)) {}
  RegistrationHandle(RegistrationHandle&& other) noexcept
      : remove_(std::exchange(other.remove_, {})) {}
  RegistrationHandle& operator=(RegistrationHandle&& other) noexcept {
    if (this != &other) {
      reset();
      remove_ = std::exchange(other.remove_, {});
    }
    return *this;
  }
  RegistrationHandle(const RegistrationHandle&) = delete;
  RegistrationHandle& operator=(const RegistrationHandle&) = delete;
  ~RegistrationHandle() { reset(); }

  // Removes the entry now (no-op when already removed).
  void reset() noexcept {
    if (auto remove = std::exchange(remove_, {})) {
      remove();
    }
  }
  bool active() const { return static_cast<bool>(remove_); }

 private:
  std::function<void()> remove_;
};

namespace detail {
// "did you mean 'x'?" for the closest known key (edit distance), or "" when none is close.
std::string suggest_key(std::string_view key, const std::vector<std::string>& known);
std::string join_keys(const std::vector<std::string>& keys);
}  // namespace detail

template <typename Factory>
class Registry {
 public:
  struct Entry {
    // Declared first so it is destroyed last: the factory's code stays mapped while it dies.
    std::shared_ptr<const void> keep_alive;
    std::string key;
    Factory factory;
    Origin origin;
  };
  using EntryPtr = std::shared_ptr<const Entry>;

  // `kind` names the registry in messages: "module adapter", "architecture", ...
  explicit Registry(std::string kind) : state_(std::make_shared<State>()), kind_(std::move(kind)) {}
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  const std::string& kind() const { return kind_; }

  // Registers `factory` under `key`. `keep_alive` (the plugin's library) is held by the entry.
  [[nodiscard]] RegistrationHandle add(std::string key,
                                       Factory factory,
                                       Origin origin,
                                       std::shared_ptr<const void> keep_alive = nullptr);

  // The entry for `key`, or null.
  EntryPtr find(std::string_view key) const;
  // The entry for `key`; an error listing the known keys when there is none.
  EntryPtr get(std::string_view key) const;
  bool contains(std::string_view key) const { return find(key) != nullptr; }
  // Sorted.
  std::vector<std::string> keys() const;
  std::size_t size() const;
  // "module adapter 'K' from plugin 'p' 1.0 (/path/libmoeq_plugin_p.so, p.cpp:12)".
  std::string describe(std::string_view key) const;

  // Calls the factory for `key` and returns what it made. The factory returns a unique_ptr<T>;
  // the result is a shared_ptr<T> that keeps the entry (and so the plugin's library) alive until
  // the object is destroyed (Boost.DLL's library_holding_deleter). Call this from host code only.
  template <typename... Args>
  auto create(std::string_view key, Args&&... args) const;

 private:
  struct State {
    mutable std::mutex mutex;
    std::map<std::string, EntryPtr, std::less<>> entries;
  };
  std::shared_ptr<State> state_;
  std::string kind_;
};

// ---- implementation
// ------------------------------------------------------------------------------

template <typename Factory>
RegistrationHandle Registry<Factory>::add(std::string key,
                                          Factory factory,
                                          Origin origin,
                                          std::shared_ptr<const void> keep_alive) {
  MOEQ_CHECK(!key.empty(), "{}: an empty key registered by {}", kind_, origin.to_string());
  MOEQ_CHECK(static_cast<bool>(factory), "{} '{}': the factory registered by {} is empty", kind_,
             key, origin.to_string());
  auto entry = std::make_shared<const Entry>(
      Entry{std::move(keep_alive), key, std::move(factory), std::move(origin)});
  {
    std::lock_guard lock(state_->mutex);
    auto [it, inserted] = state_->entries.try_emplace(key, entry);
    MOEQ_CHECK(inserted, "{} '{}' is already registered by {}; {} registers it again", kind_, key,
               it->second->origin.to_string(), entry->origin.to_string());
  }
  std::weak_ptr<State> weak_state = state_;
  const Entry* const registered = entry.get();
  return RegistrationHandle([weak_state, key = std::move(key), registered] {
    if (auto state = weak_state.lock()) {
      EntryPtr removed;  // destroyed after the lock is released
      std::lock_guard lock(state->mutex);
      auto it = state->entries.find(key);
      if (it != state->entries.end() && it->second.get() == registered) {
        removed = std::move(it->second);
        state->entries.erase(it);
      }
    }
  });
}

template <typename Factory>
typename Registry<Factory>::EntryPtr Registry<Factory>::find(std::string_view key) const {
  std::lock_guard lock(state_->mutex);
  auto it = state_->entries.find(key);
  return it == state_->entries.end() ? nullptr : it->second;
}

template <typename Factory>
typename Registry<Factory>::EntryPtr Registry<Factory>::get(std::string_view key) const {
  EntryPtr entry = find(key);
  if (entry == nullptr) [[unlikely]] {
    const std::vector<std::string> known = keys();
    MOEQ_FAIL("no {} is registered for '{}'{}; registered: {}", kind_, key,
              detail::suggest_key(key, known), known.empty() ? "none" : detail::join_keys(known));
  }
  return entry;
}

template <typename Factory>
std::vector<std::string> Registry<Factory>::keys() const {
  std::lock_guard lock(state_->mutex);
  std::vector<std::string> result;
  result.reserve(state_->entries.size());
  for (const auto& [key, entry] : state_->entries) {
    result.push_back(key);
  }
  return result;
}

template <typename Factory>
std::size_t Registry<Factory>::size() const {
  std::lock_guard lock(state_->mutex);
  return state_->entries.size();
}

template <typename Factory>
std::string Registry<Factory>::describe(std::string_view key) const {
  EntryPtr entry = get(key);
  return fmt::format("{} '{}' from {}", kind_, entry->key, entry->origin.to_string());
}

template <typename Factory>
template <typename... Args>
auto Registry<Factory>::create(std::string_view key, Args&&... args) const {
  EntryPtr entry = get(key);
  auto product = entry->factory(std::forward<Args>(args)...);
  using Product = typename decltype(product)::element_type;
  MOEQ_CHECK(product != nullptr, "{} '{}': the factory registered by {} returned null", kind_,
             entry->key, entry->origin.to_string());
  // The deleter runs the object's (plugin-side) destructor, then drops the entry, which may
  // unload the library: in that order, and from host code.
  return std::shared_ptr<Product>(product.release(),
                                  [entry = std::move(entry)](Product* object) { delete object; });
}

}  // namespace moeq
