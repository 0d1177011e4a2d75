// The memory-mapped reader: every dtype, zero-copy views and their lifetime, sharded checkpoints
// and the errors of broken files and indexes.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <array>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io_test_util.h"
#include "moeq/core/error.h"
#include "moeq/core/log.h"
#include "moeq/io/safetensors_reader.h"
#include "moeq/io/safetensors_writer.h"
#include "moeq/io/torch_dtype.h"

namespace moeq::io {
namespace {

namespace fs = std::filesystem;
using testing::read_bytes;
using testing::safetensors_bytes;
using testing::ScratchDir;
using testing::write_bytes;

// A tensor of the given type filled with random bytes (every dtype, float4 and bool included).
at::Tensor random_tensor(at::ScalarType type, at::IntArrayRef shape, int seed) {
  at::Tensor tensor = at::empty(shape, at::TensorOptions().dtype(type));
  at::manual_seed(seed);
  at::Tensor bytes = at::randint(0, 256, {static_cast<int64_t>(tensor.nbytes())}, at::kByte);
  if (type == at::kBool) {
    bytes = bytes.remainder(2);  // a bool must hold 0 or 1
  }
  std::memcpy(tensor.data_ptr(), bytes.data_ptr(), tensor.nbytes());
  return tensor;
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) {
    return false;
  }
  const at::Tensor ca = a.contiguous();
  const at::Tensor cb = b.contiguous();
  return std::memcmp(ca.const_data_ptr(), cb.const_data_ptr(), ca.nbytes()) == 0;
}

// Whether /proc/self/maps lists the file: the reader maps lazily and views keep mappings alive.
bool is_mapped(const fs::path& path) {
  std::ifstream maps("/proc/self/maps");
  const std::string target = fs::canonical(path).string();
  for (std::string line; std::getline(maps, line);) {
    if (line.size() >= target.size() &&
        line.compare(line.size() - target.size(), target.size(), target) == 0) {
      return true;
    }
  }
  return false;
}

constexpr std::array<std::pair<at::ScalarType, std::string_view>, 20> kAllTypes = {{
    {at::kDouble, "F64"},
    {at::kFloat, "F32"},
    {at::kHalf, "F16"},
    {at::kBFloat16, "BF16"},
    {at::kFloat8_e4m3fn, "F8_E4M3"},
    {at::kFloat8_e5m2, "F8_E5M2"},
    {at::kFloat8_e8m0fnu, "F8_E8M0"},
    {at::kFloat8_e4m3fnuz, "F8_E4M3FNUZ"},
    {at::kFloat8_e5m2fnuz, "F8_E5M2FNUZ"},
    {at::kFloat4_e2m1fn_x2, "F4"},
    {at::kLong, "I64"},
    {at::kInt, "I32"},
    {at::kShort, "I16"},
    {at::kChar, "I8"},
    {at::kByte, "U8"},
    {at::kUInt16, "U16"},
    {at::kUInt32, "U32"},
    {at::kUInt64, "U64"},
    {at::kBool, "BOOL"},
    {at::kComplexFloat, "C64"},
}};

TEST(SafetensorsReaderTest, RoundTripsEveryDtype) {
  ScratchDir dir;
  std::map<std::string, at::Tensor> tensors;
  int seed = 0;
  for (const auto& [type, name] : kAllTypes) {
    tensors.emplace(fmt::format("t.{}", name), random_tensor(type, {3, 4}, ++seed));
  }
  tensors.emplace("scalar", random_tensor(at::kFloat, {}, 99));
  tensors.emplace("empty", at::empty({0, 5}, at::kBFloat16));
  save_safetensors(dir.path(), tensors);

  const SafetensorsFile file(dir / kSingleFileName);
  for (const auto& [type, name] : kAllTypes) {
    const std::string key = fmt::format("t.{}", name);
    EXPECT_EQ(dtype_name(file.entry(key).dtype), name);
    const at::Tensor loaded = file.tensor(key);
    EXPECT_TRUE(same_bytes(loaded, tensors.at(key))) << key;
  }
  EXPECT_EQ(file.entry("t.F4").shape, (std::vector<int64_t>{3, 8}));  // two values per byte
  EXPECT_TRUE(same_bytes(file.tensor("scalar"), tensors.at("scalar")));
  EXPECT_EQ(file.tensor("empty").sizes(), (std::vector<int64_t>{0, 5}));
  EXPECT_EQ(file.metadata().at("format"), "pt");
}

TEST(SafetensorsReaderTest, ViewsAreZeroCopyAndKeepTheMappingAlive) {
  ScratchDir dir;
  const at::Tensor weight = at::randn({16, 8});
  save_safetensors(dir.path(), {{"w", weight}, {"b", at::randn({8})}});
  const fs::path path = dir / kSingleFileName;

  at::Tensor view;
  {
    const SafetensorsCheckpoint checkpoint(dir.path());
    // Names, dtypes and shapes come from the header alone.
    EXPECT_EQ(checkpoint.names(), (std::vector<std::string>{"b", "w"}));
    EXPECT_EQ(checkpoint.entry("w").shape, (std::vector<int64_t>{16, 8}));
    EXPECT_EQ(checkpoint.entry("w").nbytes(), 16u * 8 * 4);
    EXPECT_FALSE(is_mapped(path));

    view = checkpoint.tensor("w");
    EXPECT_TRUE(is_mapped(path));
    EXPECT_EQ(checkpoint.tensor("w").data_ptr(), view.data_ptr());  // the same mapped bytes
    const SafetensorsFile& file = checkpoint.file_of("w");
    EXPECT_EQ(file.path(), path);
  }
  EXPECT_TRUE(is_mapped(path));  // the reader is gone, the view keeps the mapping
  EXPECT_TRUE(at::equal(view, weight));
  view.reset();
  EXPECT_FALSE(is_mapped(path));
}

int64_t resident_kb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::stoll(line.substr(6));
    }
  }
  return -1;
}

TEST(SafetensorsReaderTest, DroppedPagesLeaveTheResidentSetAndViewsStayValid) {
  ScratchDir dir;
  constexpr int64_t kFloats = 16 << 20;  // 64 MiB
  const at::Tensor weight = at::arange(kFloats, at::kFloat);
  save_safetensors(dir.path(), {{"w", weight}, {"b", at::ones({8})}});
  const SafetensorsCheckpoint checkpoint(dir.path());
  const at::Tensor view = checkpoint.tensor("w");
  const int64_t before_kb = resident_kb();
  EXPECT_TRUE(at::equal(view, weight));  // touches every page of the mapping
  const int64_t touched_kb = resident_kb();
  EXPECT_GE(touched_kb - before_kb, 56 << 10) << "reading the view should map its pages";
  checkpoint.file_of("w").drop_pages("w");
  const int64_t dropped_kb = resident_kb();
  EXPECT_LE(dropped_kb, touched_kb - (56 << 10))
      << "before " << before_kb << " kB, touched " << touched_kb << " kB";
  // The view still reads the file's values (from the page cache).
  EXPECT_TRUE(at::equal(view, weight));
  EXPECT_TRUE(at::equal(checkpoint.tensor("b"), at::ones({8})));
  EXPECT_EQ(MOEQ_IO_ERROR_OF(checkpoint.file_of("w").drop_pages("nope")),
            "safetensors '" + (dir / kSingleFileName).string() + "' has no tensor 'nope'");
}

TEST(IoRemoveTree, RemovesNestedTreesButNotWhatSymlinksPointTo) {
  ScratchDir dir;
  const fs::path keep = dir / "keep.txt";
  write_bytes(keep, "kept");
  const fs::path tree = dir / "tree";
  fs::create_directories(tree / "a" / "b");
  write_bytes(tree / "a" / "b" / "file", "x");
  write_bytes(tree / "top", "y");
  fs::create_symlink(keep, tree / "a" / "link");
  fs::create_directory_symlink(dir.path(), tree / "loop");
  std::error_code ec;
  moeq::io::remove_tree(tree, ec);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_FALSE(fs::exists(fs::symlink_status(tree)));
  EXPECT_EQ(read_bytes(keep), "kept");
  moeq::io::remove_tree(tree, ec);  // already gone: not an error
  EXPECT_FALSE(ec) << ec.message();
}

TEST(SafetensorsReaderTest, LoadCopiesToDeviceAndDtype) {
  ScratchDir dir;
  const at::Tensor weight = at::randn({4, 4}).to(at::kBFloat16);
  save_safetensors(dir.path(), {{"w", weight}});
  const SafetensorsCheckpoint checkpoint(dir / kSingleFileName);
  const at::Tensor as_float = checkpoint.load("w", at::kCPU, at::kFloat);
  EXPECT_EQ(as_float.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(as_float, weight.to(at::kFloat)));
  const at::Tensor copy = checkpoint.load("w", at::kCPU);
  EXPECT_NE(copy.data_ptr(), checkpoint.tensor("w").data_ptr());
  EXPECT_TRUE(at::equal(copy, weight));
}

TEST(SafetensorsReaderTest, LoadsToCuda) {
  if (!at::hasCUDA()) {
    GTEST_SKIP() << "no CUDA device";
  }
  ScratchDir dir;
  const at::Tensor weight = at::randn({64, 32}).to(at::kBFloat16);
  save_safetensors(dir.path(), {{"w", weight}});
  const SafetensorsCheckpoint checkpoint(dir.path());
  const at::Tensor on_gpu = checkpoint.load("w", at::Device(at::kCUDA, 0), at::kFloat);
  EXPECT_TRUE(on_gpu.is_cuda());
  EXPECT_TRUE(at::equal(on_gpu.cpu(), weight.to(at::kFloat)));
}

TEST(SafetensorsReaderTest, MisalignedDataIsCopied) {
  // A 9-byte header puts the data at offset 17: not 4-byte aligned for an F32.
  ScratchDir dir;
  const float values[2] = {1.5f, -2.0f};
  const std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string padded = header + std::string(9 - header.size() % 8, ' ');
  ASSERT_EQ((8 + padded.size()) % 4, 1u);
  write_bytes(
      dir / "m.safetensors",
      safetensors_bytes(padded, std::string_view(reinterpret_cast<const char*>(values), 8)));
  const SafetensorsFile file(dir / "m.safetensors");
  const at::Tensor w = file.tensor("w");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.data_ptr()) % 4, 0u);
  EXPECT_FLOAT_EQ(w[0].item<float>(), 1.5f);
  EXPECT_FLOAT_EQ(w[1].item<float>(), -2.0f);
}

TEST(SafetensorsReaderTest, DtypesTorchCannotHold) {
  ScratchDir dir;
  write_bytes(dir / "f6.safetensors",
              safetensors_bytes(R"({"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]},)"
                                R"("b":{"dtype":"F4","shape":[2,3],"data_offsets":[3,6]}})",
                                "abcdef"));
  const SafetensorsFile file(dir / "f6.safetensors");
  EXPECT_EQ(file.entry("a").dtype, DType::kF6E2M3);  // the header is fine
  const std::string path = (dir / "f6.safetensors").string();
  EXPECT_EQ(
      MOEQ_IO_ERROR_OF(file.tensor("a")),
      fmt::format("safetensors '{}': tensor 'a' has dtype F6_E2M3, which torch cannot hold", path));
  EXPECT_EQ(MOEQ_IO_ERROR_OF(file.tensor("b")),
            fmt::format("while reading '{}': tensor 'b': F4 with shape [2, 3] cannot be a torch "
                        "float4_e2m1fn_x2 tensor, which needs an even last dimension",
                        path));
  EXPECT_EQ(MOEQ_IO_ERROR_OF(file.entry("c")),
            fmt::format("safetensors '{}' has no tensor 'c'", path));
}

TEST(SafetensorsReaderTest, TruncatedAndChangedFiles) {
  ScratchDir dir;
  save_safetensors(dir.path(), {{"w", at::randn({8})}});
  const fs::path path = dir / kSingleFileName;
  const std::string whole = read_bytes(path);

  write_bytes(path, whole.substr(0, whole.size() - 4));
  EXPECT_EQ(MOEQ_IO_ERROR_OF(SafetensorsFile{path}),
            fmt::format("safetensors '{}': tensor 'w': data_offsets [0, 32] lie outside the data "
                        "region of 28 bytes",
                        path.string()));
  write_bytes(path, whole.substr(0, 30));
  EXPECT_CONTAINS(MOEQ_IO_ERROR_OF(SafetensorsFile{path}), "runs past the end of the file");
  write_bytes(path, whole.substr(0, 5));
  EXPECT_CONTAINS(MOEQ_IO_ERROR_OF(SafetensorsFile{path}), "too few for the 8-byte header length");
  EXPECT_CONTAINS(MOEQ_IO_ERROR_OF(SafetensorsFile{dir / "absent.safetensors"}),
                  "No such file or directory");
  EXPECT_CONTAINS(MOEQ_IO_ERROR_OF(SafetensorsFile{dir.path()}), "is not a regular file");

  // Changed between reading the header and mapping the data.
  write_bytes(path, whole);
  const SafetensorsFile file(path);
  write_bytes(path, whole + "tail");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(file.tensor("w")),
            fmt::format("safetensors '{}' changed since it was opened: {} bytes then, {} now",
                        path.string(), whole.size(), whole.size() + 4));
}

// Three shards and an index.
std::map<std::string, at::Tensor> write_sharded(const fs::path& dir) {
  std::map<std::string, at::Tensor> tensors;
  for (int i = 0; i < 6; ++i) {
    tensors.emplace(fmt::format("layers.{}.w", i), at::randn({16, 16}));  // 1 KiB each
  }
  SafetensorsWriterOptions options;
  options.max_shard_bytes = 2048;
  save_safetensors(dir, tensors, options);
  return tensors;
}

TEST(SafetensorsReaderTest, ReadsShardedCheckpoints) {
  ScratchDir dir;
  const auto tensors = write_sharded(dir.path());
  for (const fs::path& path : {dir.path(), dir / kIndexFileName}) {
    const SafetensorsCheckpoint checkpoint(path);
    EXPECT_EQ(checkpoint.files().size(), 3u);
    EXPECT_EQ(checkpoint.index_path(), dir / kIndexFileName);
    ASSERT_EQ(checkpoint.names().size(), tensors.size());
    for (const auto& [name, tensor] : tensors) {
      EXPECT_TRUE(checkpoint.contains(name));
      EXPECT_TRUE(at::equal(checkpoint.tensor(name), tensor)) << name;
    }
    EXPECT_EQ(checkpoint.file_of("layers.5.w").path(), dir / "model-00003-of-00003.safetensors");
  }
  const SafetensorsCheckpoint checkpoint(dir.path());
  EXPECT_FALSE(checkpoint.contains("ghost"));
  EXPECT_EQ(MOEQ_IO_ERROR_OF(checkpoint.tensor("ghost")),
            fmt::format("checkpoint '{}' has no tensor 'ghost'", (dir / kIndexFileName).string()));
}

TEST(SafetensorsReaderTest, BrokenIndexes) {
  ScratchDir dir;
  write_sharded(dir.path());
  const fs::path index_path = dir / kIndexFileName;
  const auto index = nlohmann::json::parse(read_bytes(index_path));
  const std::string index_name = index_path.string();

  auto with_index = [&](const nlohmann::json& changed) {
    write_bytes(index_path, changed.dump());
    return MOEQ_IO_ERROR_OF(SafetensorsCheckpoint{dir.path()});
  };

  nlohmann::json ghost = index;
  ghost["weight_map"]["ghost"] = "model-00001-of-00003.safetensors";
  EXPECT_EQ(with_index(ghost),
            fmt::format("index '{}' puts tensor 'ghost' in shard '{}', which lacks it", index_name,
                        (dir / "model-00001-of-00003.safetensors").string()));

  nlohmann::json escape = index;
  escape["weight_map"]["layers.0.w"] = "../model-00001-of-00003.safetensors";
  EXPECT_CONTAINS(with_index(escape),
                  "weight_map['layers.0.w'] is "
                  "'../model-00001-of-00003.safetensors', expected a file name");
  nlohmann::json not_a_string = index;
  not_a_string["weight_map"]["layers.0.w"] = 3;
  EXPECT_CONTAINS(with_index(not_a_string), "weight_map['layers.0.w'] is 3, expected a file name");
  EXPECT_EQ(with_index({{"metadata", {}}}),
            fmt::format("index '{}' has no \"weight_map\" object", index_name));
  write_bytes(index_path, "{\"weight_map\": ");
  EXPECT_CONTAINS(MOEQ_IO_ERROR_OF(SafetensorsCheckpoint{dir.path()}),
                  fmt::format("index '{}' is not valid JSON", index_name));

  write_bytes(index_path, index.dump());
  fs::remove(dir / "model-00002-of-00003.safetensors");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(SafetensorsCheckpoint{dir.path()}),
            fmt::format("index '{}' lists shard 'model-00002-of-00003.safetensors' (for "
                        "'layers.2.w' and 1 more tensors), which does not exist",
                        index_name));

  fs::remove(index_path);
  EXPECT_EQ(MOEQ_IO_ERROR_OF(SafetensorsCheckpoint{dir.path()}),
            fmt::format("checkpoint directory '{}' holds neither model.safetensors.index.json "
                        "nor model.safetensors",
                        dir.path().string()));
}

TEST(SafetensorsReaderTest, ShardTensorsMissingFromTheIndexAreIgnoredWithAWarning) {
  ScratchDir dir;
  write_sharded(dir.path());
  const fs::path index_path = dir / kIndexFileName;
  auto index = nlohmann::json::parse(read_bytes(index_path));
  index["weight_map"].erase("layers.1.w");
  write_bytes(index_path, index.dump());

  ScopedLogCapture capture;
  const SafetensorsCheckpoint checkpoint(dir.path());
  EXPECT_FALSE(checkpoint.contains("layers.1.w"));
  EXPECT_EQ(checkpoint.names().size(), 5u);
  EXPECT_TRUE(capture.contains(
      fmt::format("shard '{}' holds 1 tensors the index does not list (first: 'layers.1.w')",
                  (dir / "model-00001-of-00003.safetensors").string())))
      << capture.text();
}

}  // namespace
}  // namespace moeq::io
