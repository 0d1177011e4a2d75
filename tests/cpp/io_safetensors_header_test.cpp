// The safetensors header parser: valid headers, and every kind of corruption with its message.
#include <gtest/gtest.h>

#include "io_test_util.h"
#include "moeq/core/error.h"
#include "moeq/io/safetensors_header.h"

namespace moeq::io {
namespace {

using testing::safetensors_bytes;

constexpr std::string_view kFile = "bad.safetensors";

SafetensorsHeader parse(std::string_view header, std::string_view data = {}) {
  return parse_safetensors(safetensors_bytes(header, data), kFile);
}

std::string error_of(std::string_view header, std::string_view data = {}) {
  const std::string bytes = safetensors_bytes(header, data);
  return MOEQ_IO_ERROR_OF(parse_safetensors(bytes, kFile));
}

TEST(SafetensorsHeaderTest, ParsesEntriesInOffsetOrderWithMetadata) {
  const auto header = parse(R"({"__metadata__":{"format":"pt"},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("a":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]},)"
                            R"("empty":{"dtype":"I64","shape":[0,3],"data_offsets":[12,12]}})",
                            std::string(12, '\0'));
  ASSERT_EQ(header.tensors.size(), 3u);
  EXPECT_EQ(header.tensors[0].name, "b");
  EXPECT_EQ(header.tensors[1].name, "a");
  EXPECT_EQ(header.tensors[1].dtype, DType::kBF16);
  EXPECT_EQ(header.tensors[1].shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(header.tensors[2].numel(), 0u);
  EXPECT_EQ(header.metadata.at("format"), "pt");
  EXPECT_EQ(header.data_size, 12u);
  EXPECT_EQ(header.data_offset(), 8 + header.header_size);
  ASSERT_NE(header.find("a"), nullptr);
  EXPECT_EQ(header.find("a")->begin, 8u);
  EXPECT_EQ(header.find("missing"), nullptr);
}

TEST(SafetensorsHeaderTest, AcceptsWhatTheReferenceAccepts) {
  // Scalars, null metadata, trailing padding spaces, unknown fields in an entry, an empty file.
  const auto header =
      parse(R"({"__metadata__":null,"s":{"dtype":"F64","shape":[],"data_offsets":[0,8],"x":1}}   )",
            std::string(8, '\0'));
  EXPECT_EQ(header.tensors.at(0).numel(), 1u);
  EXPECT_TRUE(header.metadata.empty());
  EXPECT_TRUE(parse("{}").tensors.empty());
}

TEST(SafetensorsHeaderTest, DtypeTable) {
  for (int i = 0; i <= static_cast<int>(DType::kU64); ++i) {
    const auto dtype = static_cast<DType>(i);
    EXPECT_EQ(parse_dtype(dtype_name(dtype)), dtype) << dtype_name(dtype);
  }
  EXPECT_EQ(dtype_bits(DType::kF4), 4);
  EXPECT_EQ(dtype_bits(DType::kF6E3M2), 6);
  EXPECT_EQ(dtype_bits(DType::kC64), 64);
  EXPECT_EQ(parse_dtype("F7"), std::nullopt);
}

TEST(SafetensorsHeaderTest, FileShorterThanLengthField) {
  EXPECT_EQ(MOEQ_IO_ERROR_OF(parse_safetensors("abc", kFile)),
            "safetensors 'bad.safetensors': the file has 3 bytes, too few for the 8-byte header "
            "length");
}

TEST(SafetensorsHeaderTest, HeaderLengthOverLimit) {
  std::string bytes = safetensors_bytes("{}");
  bytes[3] = 0x10;  // N = 2 + 0x10000000
  EXPECT_CONTAINS(MOEQ_IO_ERROR_OF(parse_safetensors(bytes, kFile)),
                  "header length 268435458 exceeds the limit of 100000000 bytes");
  bytes[7] = static_cast<char>(0xff);  // N near 2^64: no overflow in the bound checks
  EXPECT_CONTAINS(MOEQ_IO_ERROR_OF(parse_safetensors(bytes, kFile)), "exceeds the limit");
}

TEST(SafetensorsHeaderTest, TruncatedHeader) {
  const std::string whole = safetensors_bytes(R"({"a":{"dtype":"U8","shape":[1],)"
                                              R"("data_offsets":[0,1]}})",
                                              "x");
  EXPECT_CONTAINS(MOEQ_IO_ERROR_OF(parse_safetensors(whole.substr(0, 20), kFile)),
                  "'bad.safetensors': header length 53 runs past the end of the file (12 "
                  "bytes after the length field)");
}

TEST(SafetensorsHeaderTest, MalformedJson) {
  EXPECT_CONTAINS(error_of(R"({"a":{"dtype":"F32",)"),
                  "'bad.safetensors': the header is not valid JSON: ");
  EXPECT_CONTAINS(error_of(""), "not valid JSON");
  EXPECT_CONTAINS(error_of("{} x"), "not valid JSON");
  EXPECT_CONTAINS(error_of("{\"\xff\xfe\":{}}"), "not valid JSON");  // not UTF-8
  // nlohmann reports a number it cannot hold as out_of_range, not parse_error (found by the
  // fuzz target; tests/fuzz/corpus/regress_number_overflow).
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"U8","shape":[1e18446744073709551615]}})"),
                  "not valid JSON: [json.exception.out_of_range.406] number overflow");
  EXPECT_EQ(error_of("[1, 2]"),
            "safetensors 'bad.safetensors': the header is array [1,2], expected a JSON object");
}

TEST(SafetensorsHeaderTest, MalformedEntries) {
  EXPECT_EQ(error_of(R"({"w":3})"),
            "safetensors 'bad.safetensors': tensor 'w': the entry is number 3, expected an object");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[1]}})"),
                  "tensor 'w': the entry has no 'data_offsets'");
  EXPECT_EQ(error_of(R"({"w":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}})", "abcd"),
            "safetensors 'bad.safetensors': tensor 'w': unknown dtype \"F7\"");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", "abcd"),
                  "tensor 'w': dtype is number 7, expected a string");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":4,"data_offsets":[0,4]}})", "abcd"),
                  "tensor 'w': shape is number 4, expected an array");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "abcd"),
                  "tensor 'w': shape [-1] has dimension -1, expected an integer in [0, 2^63)");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", "abcd"),
                  "has dimension 1.0");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"U8","shape":[9223372036854775808,0],)"
                           R"("data_offsets":[0,0]}})"),
                  "has dimension 9223372036854775808");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "abcd"),
                  "tensor 'w': data_offsets is [0], expected [begin, end]");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,-4]}})", "abcd"),
                  "data_offsets is [0,-4]");
  EXPECT_CONTAINS(error_of(R"({"__metadata__":{"format":1}})"),
                  "__metadata__ key 'format' is number 1, expected a string");
  EXPECT_CONTAINS(error_of(R"({"__metadata__":["pt"]})"),
                  "__metadata__ is array [\"pt\"], expected an object");
}

TEST(SafetensorsHeaderTest, OffsetsOutsideTheData) {
  EXPECT_EQ(error_of(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", "abcd"),
            "safetensors 'bad.safetensors': tensor 'w': data_offsets [8, 4] have begin after end");
  EXPECT_EQ(error_of(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "abcd"),
            "safetensors 'bad.safetensors': tensor 'w': data_offsets [0, 8] lie outside the data "
            "region of 4 bytes");
}

TEST(SafetensorsHeaderTest, SizeMismatchAndOverflow) {
  EXPECT_EQ(error_of(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "abcdefgh"),
            "safetensors 'bad.safetensors': tensor 'w': dtype F32 and shape [3] need 12 bytes, but "
            "data_offsets [0, 8] hold 8");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],)"
                           R"("data_offsets":[0,0]}})"),
                  "tensor 'w': shape [4294967296, 4294967296] has more elements than fit in 64 "
                  "bits");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"U64","shape":[4611686018427387904],)"
                           R"("data_offsets":[0,0]}})"),
                  "tensor 'w': 4611686018427387904 elements of U64 overflow 64 bits");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}})", "a"),
                  "tensor 'w': 3 elements of F4 (4 bits each) do not fill whole bytes");
  EXPECT_NO_THROW(parse(R"({"w":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}})", "abc"));
}

TEST(SafetensorsHeaderTest, OverlapGapAndUncoveredBytes) {
  EXPECT_EQ(error_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                     std::string(12, 'x')),
            "safetensors 'bad.safetensors': tensor 'b' (data_offsets [4, 12]) overlaps tensor 'a', "
            "which ends at 8");
  EXPECT_EQ(error_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                     R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                     std::string(12, 'x')),
            "safetensors 'bad.safetensors': tensor 'b' starts at data offset 8 but the previous "
            "tensor 'a' ends at 4: a gap of 4 bytes");
  EXPECT_CONTAINS(error_of(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "12345678"),
                  "tensor 'b' starts at data offset 4 but the previous tensor ends at 0");
  EXPECT_EQ(error_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "12345678"),
            "safetensors 'bad.safetensors': the tensors cover 4 bytes of the data region but it "
            "holds 8 (4 bytes after the last tensor)");
  // Two tensors on the same bytes.
  EXPECT_CONTAINS(error_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})",
                           "1234"),
                  "tensor 'b' (data_offsets [0, 4]) overlaps tensor 'a'");
}

TEST(SafetensorsHeaderTest, DuplicateKeys) {
  EXPECT_EQ(error_of(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                     R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                     "xy"),
            "safetensors 'bad.safetensors': tensor name 'a' appears twice in the header");
  EXPECT_EQ(error_of(R"({"a":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}})", "x"),
            "safetensors 'bad.safetensors': key 'dtype' appears twice in the entry of 'a'");
}

TEST(SafetensorsHeaderTest, HostileNamesAreClippedInMessages) {
  const std::string name(5000, 'n');
  const std::string message = error_of("{\"" + name + "\":1}");
  EXPECT_LT(message.size(), 400u);
  EXPECT_CONTAINS(message, "... (5000 bytes)");
}

}  // namespace
}  // namespace moeq::io
