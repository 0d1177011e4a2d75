#include <gtest/gtest.h>

#include "moeq/core/error.h"
#include "moeq/core/log.h"

namespace {

TEST(ErrorTest, CheckCarriesFormattedMessageAndLocation) {
  const int got = 3;
  try {
    MOEQ_CHECK(got == 4, "adapter '{}': expected n_experts == 4, got {}", "qwen3_moe", got);
    FAIL() << "MOEQ_CHECK did not throw";
  } catch (const moeq::Error& e) {
    EXPECT_EQ(e.message(), "adapter 'qwen3_moe': expected n_experts == 4, got 3");
    EXPECT_NE(std::string(e.what()).find("error_test.cpp:"), std::string::npos) << e.what();
  }
}

TEST(ErrorTest, CheckPassesSilently) {
  EXPECT_NO_THROW(MOEQ_CHECK(1 + 1 == 2, "never"));
}

TEST(ErrorTest, InternalAssertAsksForReport) {
  try {
    MOEQ_INTERNAL_ASSERT(false, "layer {} missing", 7);
    FAIL();
  } catch (const moeq::InternalError& e) {
    EXPECT_NE(e.message().find("'false' failed: layer 7 missing"), std::string::npos);
    EXPECT_NE(e.message().find("bug in moeq"), std::string::npos);
  }
}

TEST(ErrorTest, WithContextPrefixes) {
  moeq::Error inner("scale is NaN", "x.cpp", 1);
  EXPECT_EQ(inner.with_context("quantizing 'model.layers.0.mlp.experts.3.w1'").message(),
            "while quantizing 'model.layers.0.mlp.experts.3.w1': scale is NaN");
}

TEST(LogTest, CaptureAndLevels) {
  moeq::ScopedLogCapture capture;
  moeq::logger().info("loaded {} v{}", "mixtral", "0.1.0");
  moeq::logger().debug("hidden at default level");
  EXPECT_TRUE(capture.contains("info: loaded mixtral v0.1.0"));
  EXPECT_FALSE(capture.contains("hidden"));
}

}  // namespace
