// The streaming, sharded safetensors writer: layout, index, determinism, and that a failed or
// abandoned write leaves nothing under a final name.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <csignal>
#include <nlohmann/json.hpp>

#include "io_test_util.h"
#include "moeq/core/error.h"
#include "moeq/io/safetensors_reader.h"
#include "moeq/io/safetensors_writer.h"

namespace moeq::io {
namespace {

namespace fs = std::filesystem;
using testing::read_bytes;
using testing::ScratchDir;
using testing::write_bytes;

std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

TEST(SafetensorsWriterTest, OneShardIsModelSafetensorsWithoutIndex) {
  ScratchDir dir;
  const auto paths = save_safetensors(dir.path(), {{"a", at::ones({2, 2})}});
  EXPECT_EQ(paths, (std::vector<fs::path>{dir / "model.safetensors"}));
  EXPECT_EQ(listing(dir.path()), (std::vector<std::string>{"model.safetensors"}));
}

TEST(SafetensorsWriterTest, LayoutFollowsTheReference) {
  // By dtype in decreasing alignment, then by name; header padded to 8 bytes with spaces.
  ScratchDir dir;
  save_safetensors(dir.path(), {{"z.bias", at::zeros({3}, at::kBFloat16)},
                                {"a.flag", at::zeros({1}, at::kBool)},
                                {"m.weight", at::zeros({2}, at::kDouble)},
                                {"b.weight", at::zeros({2}, at::kBFloat16)}});
  const std::string bytes = read_bytes(dir / "model.safetensors");
  const std::string header = bytes.substr(8, parse_header_length(bytes, bytes.size(), "x"));
  EXPECT_EQ(header.size() % 8, 0u);
  EXPECT_EQ(header.substr(0, header.find_last_not_of(' ') + 1),
            R"({"__metadata__":{"format":"pt"},)"
            R"("m.weight":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},)"
            R"("b.weight":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]},)"
            R"("z.bias":{"dtype":"BF16","shape":[3],"data_offsets":[20,26]},)"
            R"("a.flag":{"dtype":"BOOL","shape":[1],"data_offsets":[26,27]}})");
}

TEST(SafetensorsWriterTest, ShardsAtTheLimitAndWritesTheIndex) {
  ScratchDir dir;
  SafetensorsWriterOptions options;
  options.max_shard_bytes = 2500;
  options.metadata = {{"format", "pt"}, {"producer", "moeq"}};
  SafetensorsWriter writer(dir.path(), options);
  for (int i = 0; i < 3; ++i) {
    writer.add(fmt::format("layers.{}.a", i), at::full({256}, i, at::kFloat));  // 1 KiB
    writer.add(fmt::format("layers.{}.b", i), at::full({256}, i, at::kFloat));
  }
  // 2 KiB pending, the next KiB would pass 2500: shards were written as the tensors came.
  EXPECT_EQ(writer.shards_written(), 2u);
  EXPECT_EQ(writer.pending_bytes(), 2048u);
  writer.add("huge", at::zeros({1024}, at::kFloat));  // over the limit alone: its own shard
  EXPECT_EQ(writer.shards_written(), 3u);
  writer.add("tail", at::zeros({1}, at::kFloat));
  const auto paths = writer.finish();

  ASSERT_EQ(paths.size(), 6u);
  EXPECT_EQ(paths.front(), dir / "model-00001-of-00005.safetensors");
  EXPECT_EQ(paths.back(), dir / "model.safetensors.index.json");
  EXPECT_EQ(listing(dir.path()), (std::vector<std::string>{
                                     "model-00001-of-00005.safetensors",
                                     "model-00002-of-00005.safetensors",
                                     "model-00003-of-00005.safetensors",
                                     "model-00004-of-00005.safetensors",
                                     "model-00005-of-00005.safetensors",
                                     "model.safetensors.index.json",
                                 }));

  const auto index = nlohmann::json::parse(read_bytes(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 6 * 1024 + 4096 + 4);
  EXPECT_EQ(index["weight_map"]["layers.0.b"], "model-00001-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["layers.2.a"], "model-00003-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["huge"], "model-00004-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["tail"], "model-00005-of-00005.safetensors");

  const SafetensorsCheckpoint checkpoint(dir.path());
  EXPECT_EQ(checkpoint.names().size(), 8u);
  EXPECT_TRUE(at::equal(checkpoint.tensor("layers.2.b"), at::full({256}, 2, at::kFloat)));
  for (const auto& file : checkpoint.files()) {
    EXPECT_EQ(file->metadata().at("producer"), "moeq");
  }
}

TEST(SafetensorsWriterTest, SameInputSameBytes) {
  ScratchDir first;
  ScratchDir second;
  SafetensorsWriterOptions options;
  options.max_shard_bytes = 300;
  at::manual_seed(0);
  std::map<std::string, at::Tensor> tensors;
  for (int i = 0; i < 10; ++i) {
    tensors.emplace(fmt::format("t{}", i),
                    at::randn({i + 1, 7}).to(i % 2 ? at::kHalf : at::kFloat));
  }
  const auto a = save_safetensors(first.path(), tensors, options);
  const auto b = save_safetensors(second.path(), tensors, options);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_GT(a.size(), 2u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].filename(), b[i].filename());
    EXPECT_EQ(read_bytes(a[i]), read_bytes(b[i])) << a[i];
  }
}

TEST(SafetensorsWriterTest, CopiesWhatItIsGiven) {
  ScratchDir dir;
  SafetensorsWriter writer(dir.path());
  at::Tensor weight = at::arange(12, at::kFloat).reshape({3, 4});
  writer.add("w", weight);
  writer.add("wt", weight.t());  // not contiguous
  weight.zero_();                // changed after add: the file keeps what was added
  writer.finish();
  const SafetensorsFile file(dir / "model.safetensors");
  EXPECT_TRUE(at::equal(file.tensor("w"), at::arange(12, at::kFloat).reshape({3, 4})));
  EXPECT_TRUE(at::equal(file.tensor("wt"), at::arange(12, at::kFloat).reshape({3, 4}).t()));
}

TEST(SafetensorsWriterTest, EmptyCheckpoint) {
  ScratchDir dir;
  save_safetensors(dir.path(), {});
  const SafetensorsFile file(dir / "model.safetensors");
  EXPECT_TRUE(file.names().empty());
  EXPECT_EQ(file.metadata().at("format"), "pt");
}

TEST(SafetensorsWriterTest, RejectsBadInput) {
  ScratchDir dir;
  SafetensorsWriter writer(dir.path());
  writer.add("w", at::zeros({2}));
  const std::string where = fmt::format("safetensors writer for '{}'", dir.path().string());
  EXPECT_EQ(MOEQ_IO_ERROR_OF(writer.add("w", at::zeros({2}))),
            where + ": tensor 'w' was already added");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(writer.add("u", at::Tensor())), where + ": tensor 'u' is undefined");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(writer.add("c", at::zeros({2}, at::kComplexDouble))),
            "tensor 'c': torch dtype ComplexDouble has no safetensors equivalent");
  EXPECT_CONTAINS(MOEQ_IO_ERROR_OF(writer.add("f4", at::empty({}, at::kFloat4_e2m1fn_x2))),
                  "tensor 'f4' is a 0-d float4_e2m1fn_x2 tensor");
  writer.finish();
  EXPECT_EQ(MOEQ_IO_ERROR_OF(writer.add("x", at::zeros({2}))), where + ": add('x') after finish()");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(writer.finish()), where + ": finish() called twice");
  SafetensorsWriterOptions zero;
  zero.max_shard_bytes = 0;
  EXPECT_EQ(MOEQ_IO_ERROR_OF(SafetensorsWriter(dir.path(), zero)),
            "safetensors writer: max_shard_bytes must be positive");
}

TEST(SafetensorsWriterTest, AbandonedWriterRemovesItsShards) {
  ScratchDir dir;
  {
    SafetensorsWriterOptions options;
    options.max_shard_bytes = 64;
    SafetensorsWriter writer(dir.path(), options);
    writer.add("a", at::zeros({16}));
    writer.add("b", at::zeros({16}));  // the first shard is on disk now, under a hidden name
    EXPECT_EQ(listing(dir.path()), (std::vector<std::string>{".model-00001.safetensors.tmp"}));
  }
  EXPECT_TRUE(listing(dir.path()).empty());
}

// Runs body with writes limited to limit bytes per file: a write past it fails with EFBIG, as
// a full disk fails with ENOSPC, through the same code path.
template <typename Body>
void with_file_size_limit(rlim_t limit, Body body) {
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto previous_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit limited = saved;
  limited.rlim_cur = limit;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  body();
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, previous_handler);
}

TEST(SafetensorsWriterTest, FailedWriteLeavesNothingAndKeepsTheOldFile) {
  ScratchDir dir;
  write_bytes(dir / "model.safetensors", "an earlier checkpoint");
  std::string message;
  with_file_size_limit(4096, [&] {
    message = MOEQ_IO_ERROR_OF(save_safetensors(dir.path(), {{"w", at::zeros({4096})}}));
  });
  EXPECT_EQ(message,
            fmt::format("cannot write shard 1 in '{}' ('{}'): File too large after 4096 "
                        "bytes; the file was removed",
                        dir.path().string(), (dir / ".model-00001.safetensors.tmp").string()));
  EXPECT_EQ(listing(dir.path()), (std::vector<std::string>{"model.safetensors"}));
  EXPECT_EQ(read_bytes(dir / "model.safetensors"), "an earlier checkpoint");
}

TEST(SafetensorsWriterTest, FailureInALaterShardRemovesTheEarlierOnes) {
  ScratchDir dir;
  SafetensorsWriterOptions options;
  options.max_shard_bytes = 1024;
  std::string message;
  with_file_size_limit(4096, [&] {
    message = MOEQ_IO_ERROR_OF(
        save_safetensors(dir.path(), {{"a", at::zeros({64})}, {"b", at::zeros({4096})}}, options));
  });
  EXPECT_CONTAINS(message, "cannot write shard 2 in");
  EXPECT_TRUE(listing(dir.path()).empty());
}

TEST(SafetensorsWriterTest, WriteFileAtomically) {
  ScratchDir dir;
  write_file_atomically(dir / "index.json", "{}\n");
  EXPECT_EQ(read_bytes(dir / "index.json"), "{}\n");
  EXPECT_EQ(listing(dir.path()), (std::vector<std::string>{"index.json"}));
  EXPECT_CONTAINS(MOEQ_IO_ERROR_OF(write_file_atomically(dir / "missing" / "x.json", "{}")),
                  "cannot create");
}

// Resuming: a writer stopped after checkpoint() and a fresh one given that state write the same
// bytes as one that never stopped; what the state names must still be there.
TEST(SafetensorsWriterTest, CheckpointRestoreGivesTheUninterruptedBytes) {
  const auto tensor = [](int64_t i) { return at::arange(i * 100, i * 100 + 50, at::kFloat); };
  SafetensorsWriterOptions options;
  options.max_shard_bytes = 450;  // two tensors (200 bytes each) per shard
  ScratchDir straight;
  {
    SafetensorsWriter writer(straight.path(), options);
    for (int64_t i = 0; i < 7; ++i) {
      writer.add(fmt::format("t{}", i), tensor(i));
    }
    writer.finish();
  }
  ScratchDir resumed;
  options.keep_unfinished = true;
  std::string state;
  {
    SafetensorsWriter writer(resumed.path(), options);
    for (int64_t i = 0; i < 3; ++i) {  // one shard written, t2 pending
      writer.add(fmt::format("t{}", i), tensor(i));
    }
    state = writer.checkpoint(resumed / "spill-a.safetensors");
    writer.add("t3", tensor(3));  // lost with the "kill": the writer is dropped unfinished
  }
  {
    SafetensorsWriter writer(resumed.path(), options);
    writer.restore(state);
    EXPECT_EQ(writer.shards_written(), 1U);
    for (int64_t i = 3; i < 7; ++i) {
      writer.add(fmt::format("t{}", i), tensor(i));
    }
    writer.finish();
  }
  fs::remove(resumed / "spill-a.safetensors");
  EXPECT_EQ(listing(straight.path()), listing(resumed.path()));
  for (const auto& name : listing(straight.path())) {
    EXPECT_EQ(read_bytes(straight / name), read_bytes(resumed / name)) << name;
  }
}

TEST(SafetensorsWriterTest, RestoreNamesWhatIsMissing) {
  SafetensorsWriterOptions options;
  options.max_shard_bytes = 450;
  options.keep_unfinished = true;
  ScratchDir dir;
  std::string state;
  {
    SafetensorsWriter writer(dir.path(), options);
    for (int64_t i = 0; i < 3; ++i) {
      writer.add(fmt::format("t{}", i), at::zeros({50}));
    }
    state = writer.checkpoint(dir / "spill.safetensors");
  }
  const auto restore_error = [&](const std::string& text) {
    SafetensorsWriter writer(dir.path(), options);
    try {
      writer.restore(text);
    } catch (const Error& e) {
      return e.message();
    }
    return std::string("no error");
  };
  EXPECT_NE(restore_error("{not json").find("malformed writer state"), std::string::npos);
  fs::rename(dir / "spill.safetensors", dir / "moved.safetensors");
  EXPECT_NE(restore_error(state).find("spill file '" + (dir / "spill.safetensors").string() +
                                      "' is missing"),
            std::string::npos);
  fs::remove(dir / ".model-00001.safetensors.tmp");
  EXPECT_NE(restore_error(state).find("shard '.model-00001.safetensors.tmp' is missing"),
            std::string::npos);
}

}  // namespace
}  // namespace moeq::io
