// Bit packing: compressed-tensors' dense cross-element int32 layout for 1..8 bits (checked
// against a bit-by-bit reference), zero points packed along rows, ModelOpt's INT4 row pairs.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

#include "kernels_int_fp8_testing.h"
#include "moeq/kernels/pack.h"

namespace {

namespace mk = moeq::kernels;
using namespace mk::testing;

// The pack-quantized words of one row, bit by bit: element i at global bit i * b.
std::vector<uint32_t> reference_words(const std::vector<int>& codes, int bits) {
  const int64_t n_words = (static_cast<int64_t>(codes.size()) * bits + 31) / 32;
  std::vector<uint32_t> words(n_words, 0);
  for (size_t i = 0; i < codes.size(); ++i) {
    const uint32_t u = static_cast<uint32_t>(codes[i] + (1 << (bits - 1)));
    for (int k = 0; k < bits; ++k) {
      const int64_t bit = static_cast<int64_t>(i) * bits + k;
      words[bit / 32] |= ((u >> k) & 1u) << (bit % 32);
    }
  }
  return words;
}

at::Tensor random_codes(at::IntArrayRef shape, int bits, int seed) {
  at::manual_seed(seed);
  return at::randint(-(1 << (bits - 1)), 1 << (bits - 1), shape, at::kChar);
}

TEST(KernelsPackTest, MatchesBitByBitLayoutForAllWidths) {
  for (int bits = 1; bits <= 8; ++bits) {
    for (const int64_t cols : {1, 31, 32, 33, 100, 128}) {
      SCOPED_TRACE(::testing::Message() << bits << " bits, " << cols << " cols");
      const at::Tensor codes = random_codes({3, cols}, bits, bits * 1000 + static_cast<int>(cols));
      const at::Tensor packed = mk::pack_int(codes, bits);
      ASSERT_EQ(packed.scalar_type(), at::kInt);
      ASSERT_EQ(packed.size(1), (cols * bits + 31) / 32);
      for (int64_t r = 0; r < 3; ++r) {
        std::vector<int> row(cols);
        for (int64_t c = 0; c < cols; ++c) {
          row[c] = codes[r][c].item<int>();
        }
        const std::vector<uint32_t> want = reference_words(row, bits);
        for (size_t w = 0; w < want.size(); ++w) {
          ASSERT_EQ(static_cast<uint32_t>(packed[r][static_cast<int64_t>(w)].item<int32_t>()),
                    want[w])
              << "row " << r << " word " << w;
        }
      }
      EXPECT_TRUE(bits_equal(mk::unpack_int(packed, bits, cols), codes));
    }
  }
}

TEST(KernelsPackTest, Int4NibbleOrder) {
  // Element 0 in bits 0-3, element 7 in bits 28-31, offset +8 (vLLM's uint4b8).
  const at::Tensor codes = at::tensor({-8, -7, 0, 1, 2, 3, 6, 7}, at::kChar).view({1, 8});
  const uint32_t want = 0x0u | (1u << 4) | (8u << 8) | (9u << 12) | (10u << 16) | (11u << 20) |
                        (14u << 24) | (15u << 28);
  EXPECT_EQ(static_cast<uint32_t>(mk::pack_int(codes, 4).item<int32_t>()), want);
}

TEST(KernelsPackTest, StacksAndTransposedInputs) {
  const at::Tensor codes = random_codes({4, 16, 96}, 4, 7);
  const at::Tensor packed = mk::pack_int(codes, 4);
  for (int64_t e = 0; e < 4; ++e) {
    EXPECT_TRUE(bits_equal(packed[e], mk::pack_int(codes[e], 4)));
  }
  const at::Tensor t = random_codes({4, 96, 16}, 3, 8).transpose(-1, -2);
  EXPECT_TRUE(bits_equal(mk::pack_int(t, 3), mk::pack_int(t.contiguous(), 3)));
  EXPECT_TRUE(bits_equal(mk::unpack_int(mk::pack_int(t, 3), 3, 96), t.contiguous()));
}

TEST(KernelsPackTest, ZeroPointsPackAlongRows) {
  for (int bits = 1; bits <= 8; ++bits) {
    const at::Tensor zp = random_codes({2, 70, 5}, bits, bits);
    const at::Tensor packed = mk::pack_int_rows(zp, bits);
    EXPECT_EQ(packed.sizes(), (std::vector<int64_t>{2, (70 * bits + 31) / 32, 5}));
    EXPECT_TRUE(packed.is_contiguous());
    EXPECT_TRUE(bits_equal(
        packed, mk::pack_int(zp.transpose(-1, -2), bits).transpose(-1, -2).contiguous()));
    EXPECT_TRUE(bits_equal(mk::unpack_int_rows(packed, bits, 70), zp));
  }
}

TEST(KernelsPackTest, ModeloptRowPairs) {
  const at::Tensor codes = random_codes({3, 6, 40}, 4, 21);
  const at::Tensor packed = mk::pack_int4_row_pairs(codes);
  ASSERT_EQ(packed.sizes(), (std::vector<int64_t>{3, 3, 40}));
  ASSERT_EQ(packed.scalar_type(), at::kByte);
  // ModelOpt's pack_int4_in_uint8: byte = (row 2j & 0xF) | (row 2j+1 & 0xF) << 4.
  const at::Tensor lo = codes.slice(1, 0, 6, 2).to(at::kInt).bitwise_and(0xF);
  const at::Tensor hi = codes.slice(1, 1, 6, 2).to(at::kInt).bitwise_and(0xF);
  EXPECT_TRUE(bits_equal(packed, lo.bitwise_or(hi.__lshift__(4)).to(at::kByte)));
  EXPECT_TRUE(bits_equal(mk::unpack_int4_row_pairs(packed), codes));
  const at::Tensor t = codes.transpose(-1, -2).contiguous().transpose(-1, -2);
  EXPECT_TRUE(bits_equal(mk::pack_int4_row_pairs(t), packed));
}

TEST(KernelsPackTest, RejectsBadInputs) {
  const at::Tensor codes = at::zeros({4, 64}, at::kChar);
  EXPECT_ERROR(mk::pack_int(codes, 0), "pack_int: num_bits must be in 1..8, got 0");
  EXPECT_ERROR(mk::pack_int(codes.to(at::kInt), 4), "pack_int: codes must be Char, got Int");
  EXPECT_ERROR(mk::unpack_int(codes, 4, 64), "unpack_int: packed must be Int, got Char");
  EXPECT_ERROR(mk::unpack_int(at::zeros({4, 7}, at::kInt), 4, 64),
               "unpack_int: 64 cols of 4 bits pack into 8 int32 words, but packed has 7");
  EXPECT_ERROR(mk::pack_int4_row_pairs(at::zeros({3, 8}, at::kChar)),
               "pack_int4_row_pairs: rows must be even (two output rows share a byte), got 3 rows");
  EXPECT_ERROR(mk::unpack_int4_row_pairs(codes), "unpack_int4_row_pairs: packed must be Byte");
  EXPECT_ERROR(mk::pack_int_rows(at::zeros({4}, at::kChar), 4),
               "pack_int_rows: codes must have at least 2 dims");
  EXPECT_ERROR(mk::unpack_int_rows(at::zeros({4}, at::kInt), 4, 4),
               "unpack_int_rows: packed must have at least 2 dims");
}

}  // namespace
