// The run report and the calibration data loader.
#include <gtest/gtest.h>

#include <moeq/core/error.h>
#include <moeq/core/progress.h>
#include <moeq/pipeline/calibration_data.h>
#include <moeq/pipeline/report.h>

#include <ATen/ATen.h>

#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

namespace fs = std::filesystem;
using moeq::pipeline::CalibrationDataOptions;
using moeq::pipeline::ExpertCoverage;
using moeq::pipeline::PipelineResult;
using moeq::pipeline::Report;

PipelineResult one_layer_result() {
  PipelineResult r;
  r.architecture = "MixtralForCausalLM";
  r.calibration_tokens = 1000;
  r.quantized_parameters = 100;
  r.quantized_bytes = 52;
  moeq::pipeline::LayerResult layer;
  layer.index = 0;
  layer.tokens = 1000;
  layer.seconds = 0.5;
  layer.phases = {0.05, 0.2, 0.15, 0.1};
  layer.output_error = 0.05;
  ExpertCoverage cov("model.layers.0.<mlp>", "MixtralSparseMoeBlock", 4);
  cov.tokens = 1000;
  cov.routed = {900, 700, 400, 0};
  cov.seen = {1000, 1000, 1000, 1000};
  layer.coverage.push_back(cov);
  layer.projections.push_back(
      {"model.layers.0.<mlp>.experts.3.w1", "model.layers.0.<mlp>", 3, "gate", 0.25, 1000, false});
  r.layers.push_back(layer);
  return r;
}

TEST(PipelineReport, JsonHoldsTheNumbersAndListsStarvedExperts) {
  moeq::pipeline::RunInfo info;
  info.model = "m";
  info.scheme = "W4A16";
  const Report report(one_layer_result(), info);
  const auto& j = report.data();
  EXPECT_EQ(j["run"]["architecture"], "MixtralForCausalLM");
  EXPECT_DOUBLE_EQ(j["run"]["bits_per_weight"].get<double>(), 8.0 * 52 / 100);
  ASSERT_EQ(j["starved_experts"].size(), 1u);  // expert 3: 0 routed tokens
  EXPECT_EQ(j["starved_experts"][0]["expert"], 3);
  EXPECT_EQ(j["layers"][0]["blocks"][0]["routed"][0], 900);
  EXPECT_TRUE(j["eval"].is_null());
  EXPECT_EQ(Report::starved_threshold(1000), 10);
  EXPECT_EQ(Report::starved_threshold(50), 1);
}

TEST(PipelineReport, HtmlIsSelfContainedEscapedAndHighlightsStarvedExperts) {
  moeq::pipeline::RunInfo info;
  info.model = "m";
  const Report report(one_layer_result(), info);
  const auto html = report.html();
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("http://cdn"), std::string::npos);
  EXPECT_NE(html.find("model.layers.0.&lt;mlp&gt;"), std::string::npos);
  EXPECT_EQ(html.find("model.layers.0.<mlp>"), std::string::npos);
  EXPECT_NE(html.find("Starved experts (1)"), std::string::npos);
  EXPECT_NE(html.find("Time per layer"), std::string::npos);
  EXPECT_NE(html.find("<title>layer 0: calibrate 0.20 s of 0.50 s</title>"), std::string::npos);
  EXPECT_NE(html.find("#d00000"), std::string::npos);  // the starved cell's outline
  EXPECT_NE(report.summary_text().find("starved experts: 1"), std::string::npos);
}

TEST(ProgressBar, RendersBarRateAndEta) {
  EXPECT_EQ(moeq::ProgressBar::render("layer 1/2", 5, 10, 1234.0, "tok", 3.0, 10),
            "layer 1/2 [#####     ]  50% 1.2k tok/s 0:03 eta 0:03");
}

class CalibrationDataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moeq_calib_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  fs::path write(const std::string& name, const std::string& text) {
    const auto p = dir_ / name;
    std::ofstream(p) << text;
    return p;
  }
  std::string error_of(const CalibrationDataOptions& options) {
    try {
      moeq::pipeline::load_calibration_data(options, nullptr);
    } catch (const moeq::Error& e) {
      return e.message();
    }
    return "no error";
  }
  fs::path dir_;
};

TEST_F(CalibrationDataTest, JsonlWindowsAreSeededAndBatched) {
  CalibrationDataOptions o;
  o.path = write("c.jsonl", "[1,2,3,4,5]\n\n{\"input_ids\": [6,7,8,9,10,11]}\n");
  o.seq_len = 2;
  o.samples = 4;
  o.batch_size = 3;
  o.vocab_size = 12;
  const auto a = moeq::pipeline::load_calibration_data(o, nullptr);
  EXPECT_EQ(a.documents, 2);
  EXPECT_EQ(a.tokens, 11);
  EXPECT_EQ(a.windows, 5);
  EXPECT_EQ(a.samples, 4);
  ASSERT_EQ(a.batches.size(), 2u);
  EXPECT_EQ(a.batches[0].sizes(), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(a.batches[1].sizes(), (std::vector<int64_t>{1, 2}));
  const auto b = moeq::pipeline::load_calibration_data(o, nullptr);
  EXPECT_TRUE(at::equal(a.batches[0], b.batches[0]));  // same seed, same windows
  o.seed = 7;
  const auto c = moeq::pipeline::load_calibration_data(o, nullptr);
  EXPECT_FALSE(at::equal(at::cat(a.batches), at::cat(c.batches)));
}

TEST_F(CalibrationDataTest, ErrorsNameTheFileAndValues) {
  CalibrationDataOptions o;
  o.seq_len = 2;
  o.samples = 1;
  o.vocab_size = 10;
  o.path = write("bad.jsonl", "[1,2]\n[1, oops]\n");
  EXPECT_NE(error_of(o).find("bad.jsonl:2: malformed JSON"), std::string::npos) << error_of(o);
  o.path = write("float.jsonl", "[1, 2.5]\n");
  EXPECT_NE(error_of(o).find("float.jsonl:1: token ids must be integers"), std::string::npos);
  o.path = write("vocab.jsonl", "[1, 2, 30]\n");
  EXPECT_NE(error_of(o).find("token id 30"), std::string::npos);
  EXPECT_NE(error_of(o).find("[0, 10)"), std::string::npos);
  o.path = write("short.jsonl", "[1]\n");
  EXPECT_NE(error_of(o).find("fewer than one sequence of seq_len 2"), std::string::npos);
  o.path = write("doc.txt", "hello");
  EXPECT_NE(error_of(o).find("needs a tokenizer"), std::string::npos);
  o.path = dir_ / "missing.jsonl";
  EXPECT_NE(error_of(o).find("does not exist"), std::string::npos);
  o.path = write("data.bin", "x");
  EXPECT_NE(error_of(o).find("cannot tell the calibration data format"), std::string::npos);
}

TEST_F(CalibrationDataTest, TextThroughTheByteTokenizerGetsBos) {
  CalibrationDataOptions o;
  o.path = write("t.txt", "abc");
  o.seq_len = 4;
  o.samples = 1;
  o.bos_token_id = 256;
  moeq::pipeline::ByteTokenizer bytes;
  const auto d = moeq::pipeline::load_calibration_data(o, &bytes);
  ASSERT_EQ(d.batches.size(), 1u);
  EXPECT_EQ(d.batches[0][0][0].item<int64_t>(), 256);
  EXPECT_EQ(d.batches[0][0][1].item<int64_t>(), 'a');
}

}  // namespace
