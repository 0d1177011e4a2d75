// Bit packing shared by the CPU references and the CUDA kernels.
//
// compressed-tensors pack-quantized (compressors/pack_quantized/helpers.py, the dense
// cross-element layout): a signed b-bit code v is stored as u = v + 2^(b-1); element i of a row
// sits at global bit i * b, little end first, and may straddle two int32 words. 32 elements fill
// exactly b words, so rows are packed in chunks of 32 (a partial last chunk is zero-padded and the
// row truncated to ceil(cols * b / 32) words).
#pragma once

#include <cstdint>

#include "common/numerics.h"

namespace moeq::kernels::pack {

constexpr int kChunk = 32;  // elements per chunk; a chunk packs into num_bits words

MOEQ_HOST_DEVICE MOEQ_INLINE uint32_t offset_code(int8_t code, int num_bits) {
  const uint32_t mask = (1u << num_bits) - 1u;
  return static_cast<uint32_t>(static_cast<int32_t>(code) + (1 << (num_bits - 1))) & mask;
}

MOEQ_HOST_DEVICE MOEQ_INLINE int8_t signed_code(uint32_t u, int num_bits) {
  return static_cast<int8_t>(static_cast<int32_t>(u) - (1 << (num_bits - 1)));
}

// Packs up to 32 offset codes u[0..n) (the rest count as 0) into words[0..num_bits).
MOEQ_HOST_DEVICE MOEQ_INLINE void pack_chunk(const uint32_t* u,
                                             int n,
                                             int num_bits,
                                             uint32_t* words) {
  for (int w = 0; w < num_bits; ++w) {
    words[w] = 0;
  }
  for (int i = 0; i < n; ++i) {
    const int bit = i * num_bits;
    const int w = bit >> 5;
    const int off = bit & 31;
    words[w] |= u[i] << off;
    if (off + num_bits > 32) {
      words[w + 1] |= u[i] >> (32 - off);
    }
  }
}

// Element i (0..31) of a chunk packed in words[0..num_bits), as its offset code.
MOEQ_HOST_DEVICE MOEQ_INLINE uint32_t unpack_element(const uint32_t* words, int i, int num_bits) {
  const uint32_t mask = (1u << num_bits) - 1u;
  const int bit = i * num_bits;
  const int w = bit >> 5;
  const int off = bit & 31;
  uint32_t u = words[w] >> off;
  if (off + num_bits > 32) {
    u |= words[w + 1] << (32 - off);
  }
  return u & mask;
}

// ModelOpt INT4-AWQ: two codes of adjacent output rows per byte, row 2j in the low nibble.
MOEQ_HOST_DEVICE MOEQ_INLINE uint8_t pack_nibbles(int8_t lo, int8_t hi) {
  return static_cast<uint8_t>((static_cast<uint8_t>(lo) & 0x0F) |
                              ((static_cast<uint8_t>(hi) & 0x0F) << 4));
}
MOEQ_HOST_DEVICE MOEQ_INLINE int8_t low_nibble(uint8_t b) {
  return static_cast<int8_t>(static_cast<int8_t>(b << 4) >> 4);
}
MOEQ_HOST_DEVICE MOEQ_INLINE int8_t high_nibble(uint8_t b) {
  return static_cast<int8_t>(static_cast<int8_t>(b) >> 4);
}

}  // namespace moeq::kernels::pack
