// Helpers shared by the io_*_test.cpp suites: a scratch directory and hand-made safetensors bytes.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include "moeq/io/remove_tree.h"

namespace moeq::io::testing {

// Removes a directory tree, ignoring errors (moeq::io::remove_tree; never remove_all).
inline void remove_tree(const std::filesystem::path& path) {
  std::error_code ignored;
  moeq::io::remove_tree(path, ignored);
}

// A fresh directory under the system temp dir, removed with its contents on destruction.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "moeq-io-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
    EXPECT_FALSE(path_.empty());
  }
  ~ScratchDir() { remove_tree(path_); }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// 8-byte little-endian length, then the header as given, then the data.
inline std::string safetensors_bytes(std::string_view header, std::string_view data = {}) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) {
    bytes[i] = static_cast<char>((static_cast<uint64_t>(header.size()) >> (8 * i)) & 0xff);
  }
  bytes.append(header);
  bytes.append(data);
  return bytes;
}

inline void write_bytes(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// gtest's own substring check (the suite links no gmock).
#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, needle, haystack)

// The message of the moeq::Error that statement throws ("" and a test failure when none).
#define MOEQ_IO_ERROR_OF(statement)               \
  [&]() -> std::string {                          \
    try {                                         \
      statement;                                  \
    } catch (const ::moeq::Error& e) {            \
      return e.message();                         \
    }                                             \
    ADD_FAILURE() << #statement " did not throw"; \
    return {};                                    \
  }()

}  // namespace moeq::io::testing
