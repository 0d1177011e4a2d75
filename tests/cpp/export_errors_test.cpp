// The exporters' errors: each names the tensor or path and what is wrong, and leaves nothing
// under the output's name (nor a temporary beside it).
#include <signal.h>
#include <sys/resource.h>

#include "export_test_util.h"

namespace moeq::exporting {
namespace {

namespace fs = std::filesystem;

using io::testing::read_bytes;
using io::testing::ScratchDir;
using testing::options_for;
using testing::siblings;
using testing::TinyExperts;

const std::string kExperts = "model.layers.0.block_sparse_moe.experts.";

TEST(ExportErrors, ExistingOutputIsKept) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  fs::create_directories(dir / "out");
  io::testing::write_bytes(dir / "out" / "mine.txt", "mine");
  const std::string message =
      EXPORT_ERROR_OF(make_exporter(options_for(dir / "src", dir / "out", "W4A16")));
  EXPECT_CONTAINS(message, "already exists");
  EXPECT_CONTAINS(message, (dir / "out").string());
  EXPECT_EQ(read_bytes(dir / "out" / "mine.txt"), "mine");
  EXPECT_EQ(siblings(dir.path(), "out"), std::vector<std::string>{"out"});
}

TEST(ExportErrors, UnwritableOutput) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  io::testing::write_bytes(dir / "file", "a regular file where a directory must go");
  const std::string message =
      EXPORT_ERROR_OF(make_exporter(options_for(dir / "src", dir / "file" / "out", "W4A16")));
  EXPECT_CONTAINS(message, "cannot create");
  EXPECT_CONTAINS(message, (dir / "file").string());
  EXPECT_EQ(read_bytes(dir / "file"), "a regular file where a directory must go");
}

TEST(ExportErrors, SourceWithoutConfig) {
  ScratchDir dir;
  fs::create_directories(dir / "src");
  const std::string message =
      EXPORT_ERROR_OF(make_exporter(options_for(dir / "src", dir / "out", "W4A16")));
  EXPECT_CONTAINS(message, "no config.json");
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

// A disk that fills up: RLIMIT_FSIZE makes every write past 64 KiB fail with EFBIG (SIGXFSZ
// ignored so that the write returns the error instead of killing the process).
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    previous_handler_ = ::signal(SIGXFSZ, SIG_IGN);
    ::getrlimit(RLIMIT_FSIZE, &previous_);
    rlimit limit = previous_;
    limit.rlim_cur = bytes;
    EXPECT_EQ(::setrlimit(RLIMIT_FSIZE, &limit), 0);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &previous_);
    ::signal(SIGXFSZ, previous_handler_);
  }

 private:
  rlimit previous_{};
  sighandler_t previous_handler_;
};

TEST(ExportErrors, FullDiskLeavesNothing) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(quant::preset_scheme("W8A8-FP8-DYNAMIC"), 4, 128, 128);
  std::string message;
  {
    FileSizeLimit limit(64 << 10);
    message = EXPORT_ERROR_OF({
      auto exporter = make_exporter(options_for(dir / "src", dir / "out", "W8A8-FP8-DYNAMIC"));
      experts.add_all(*exporter);
      exporter->finish(testing::summary_for(experts.names()));
    });
  }
  EXPECT_CONTAINS(message, "File too large");
  EXPECT_CONTAINS(message, ".out.moeq-partial-");  // names the file being written
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

TEST(ExportErrors, GateUpGlobalScalesDiffer) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  // Not fused: w1 and w3 of each expert keep their own global scales.
  TinyExperts experts(quant::preset_scheme("NVFP4"), 2, 128, 64, /*fuse_gate_up=*/false);
  const std::string message = EXPORT_ERROR_OF({
    auto exporter = make_exporter(options_for(dir / "src", dir / "out", "NVFP4"));
    experts.add_all(*exporter);
  });
  EXPECT_CONTAINS(message, kExperts + "0.w3.weight_global_scale");
  EXPECT_CONTAINS(message, kExperts + "0.w1.weight_global_scale");
  EXPECT_CONTAINS(message, "share one global scale");
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

TEST(ExportErrors, GateUpWeightScale2DiffersForModelOpt) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(quant::preset_scheme("NVFP4"), 1, 128, 64, /*fuse_gate_up=*/false);
  const std::string message = EXPORT_ERROR_OF({
    auto exporter =
        make_exporter(options_for(dir / "src", dir / "out", "NVFP4", ExportFormat::kModelOpt));
    experts.add_all(*exporter);
  });
  EXPECT_CONTAINS(message, kExperts + "0.w3.weight_scale_2");
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

TEST(ExportErrors, ExpertInputScalesDiffer) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  const auto scheme = quant::preset_scheme("W8A8-FP8");  // static per-tensor input scales
  TinyExperts experts(scheme, 2, 128, 128);
  // Expert 1's w2 gets its own input quantizer, calibrated on larger activations.
  quant::TensorQuantizer own(*scheme.input_activations, quant::TensorRole::kInput, "own");
  own.observe(at::full({4, 128}, 3.0f));
  experts.find(1, "w2").input_quantizer = &own;
  const std::string message = EXPORT_ERROR_OF({
    auto exporter = make_exporter(options_for(dir / "src", dir / "out", "W8A8-FP8"));
    experts.add_all(*exporter);
  });
  EXPECT_CONTAINS(message, kExperts + "1.w2.input_scale");
  EXPECT_CONTAINS(message, kExperts + "0.w2.input_scale");
  EXPECT_CONTAINS(message, "share one input scale");
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

// W4A16 with group 32: Marlin's tile over the intermediate size is max(64, 32) = 64.
quant::QuantScheme w4a16_group32() {
  auto scheme = quant::preset_scheme("W4A16");
  scheme.weights->group_size = 32;
  return scheme.validate();
}

TEST(ExportErrors, MarlinIntermediateSize) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(w4a16_group32(), 1, 128, 96);  // I = 96
  auto options = options_for(dir / "src", dir / "out", "W4A16");
  options.scheme = w4a16_group32();
  const std::string message = EXPORT_ERROR_OF({
    auto exporter = make_exporter(options);
    experts.add_all(*exporter);
  });
  EXPECT_CONTAINS(message, kExperts + "0.w1.weight");
  EXPECT_CONTAINS(message, "Marlin");
  EXPECT_CONTAINS(message, "intermediate size divisible by max(64, group size) = 64");
  EXPECT_CONTAINS(message, "intermediate size is 96");
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

TEST(ExportErrors, MarlinHiddenSize) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(w4a16_group32(), 1, 96, 128);  // H = 96
  auto options = options_for(dir / "src", dir / "out", "W4A16");
  options.scheme = w4a16_group32();
  const std::string message = EXPORT_ERROR_OF({
    auto exporter = make_exporter(options);
    experts.add_all(*exporter);
  });
  EXPECT_CONTAINS(message, kExperts + "0.w1.weight");
  EXPECT_CONTAINS(message, "hidden size divisible by 128");
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

TEST(ExportErrors, W4A8Fp8NeedsPackQuantized) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(quant::preset_scheme("W4A8-FP8"), 1, 256, 256);
  const std::string message = EXPORT_ERROR_OF({
    auto exporter = make_exporter(options_for(dir / "src", dir / "out", "W4A8-FP8"));
    experts.add_all(*exporter);
  });
  EXPECT_CONTAINS(message, kExperts + "0.w1.weight");
  EXPECT_CONTAINS(message, "loads pack-quantized weights, the scheme's format is int-quantized");
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

TEST(ExportErrors, Fp8BlockIntermediateSize) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(quant::preset_scheme("FP8-block"), 1, 128, 64);
  const std::string message = EXPORT_ERROR_OF({
    auto exporter = make_exporter(options_for(dir / "src", dir / "out", "FP8-block"));
    experts.add_all(*exporter);
  });
  EXPECT_CONTAINS(message,
                  "FP8 block MoE kernel needs the intermediate size divisible by the "
                  "block height 128");
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

TEST(ExportErrors, ExpertLeftUnquantized) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(quant::preset_scheme("W8A8-FP8-DYNAMIC"), 2, 128, 128);
  std::vector<std::string> expected = experts.names();
  expected.push_back(kExperts + "2.w1");
  const std::string message = EXPORT_ERROR_OF({
    auto exporter = make_exporter(options_for(dir / "src", dir / "out", "W8A8-FP8-DYNAMIC"));
    experts.add_all(*exporter);
    exporter->finish(testing::summary_for(expected));
  });
  EXPECT_CONTAINS(message, kExperts + "2.w1");
  EXPECT_CONTAINS(message, "unquantized");
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

TEST(ExportErrors, ExpertWrittenAsIsWithoutBeingIgnored) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(quant::preset_scheme("W8A8-FP8-DYNAMIC"), 1, 128, 128);
  const std::string message = EXPORT_ERROR_OF({
    auto exporter = make_exporter(options_for(dir / "src", dir / "out", "W8A8-FP8-DYNAMIC"));
    experts.add_all(*exporter);
    exporter->add_tensor(kExperts + "1.w2.weight", testing::random_weight(128, 128, 3));
    exporter->finish(testing::summary_for(experts.names()));
  });
  EXPECT_CONTAINS(message, kExperts + "1.w2");
  EXPECT_CONTAINS(message, "not in the ignore list");
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

TEST(ExportErrors, ModelOptHasNoLayoutForTheScheme) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  const std::string message = EXPORT_ERROR_OF(
      make_exporter(options_for(dir / "src", dir / "out", "MXFP4", ExportFormat::kModelOpt)));
  EXPECT_CONTAINS(message, "scheme 'MXFP4'");
  for (const char* algo : {"FP8", "NVFP4", "W4A16_NVFP4", "W4A16_AWQ"}) {
    EXPECT_CONTAINS(message, algo);
  }
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

TEST(ExportErrors, FinishRefusedAfterAFailedAdd) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(w4a16_group32(), 1, 128, 96);
  auto options = options_for(dir / "src", dir / "out", "W4A16");
  options.scheme = w4a16_group32();
  auto exporter = make_exporter(options);
  EXPECT_THROW(experts.add_all(*exporter), Error);
  EXPECT_CONTAINS(EXPORT_ERROR_OF(exporter->finish(testing::summary_for({}))), "failed earlier");
  exporter.reset();
  EXPECT_TRUE(siblings(dir.path(), "out").empty());
}

}  // namespace
}  // namespace moeq::exporting
