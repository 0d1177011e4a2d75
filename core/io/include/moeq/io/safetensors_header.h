// The safetensors header: dtypes, tensor entries and the strict parser. This part knows nothing
// of libtorch (the fuzz target builds it alone with clang); safetensors_reader.h puts tensors on
// top of it.
//
// File layout: 8 bytes N (u64 little-endian), N bytes of JSON, then the data region. The JSON is
// an object of objects: {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [2, 3],
// "data_offsets": [begin, end]}, ...}, offsets relative to the data region. Validation follows
// the reference implementation (huggingface/safetensors, safetensors/src/tensor.rs): N at most
// 100 MB, well-formed JSON, known dtypes, non-negative integer shapes, begin <= end, byte size ==
// dtype bits x product(shape) / 8 (overflow-checked, whole bytes), and the tensors, ordered by
// offset, cover the data region exactly: no gap, no overlap, nothing after the last one.
// Stricter than the reference: duplicate keys anywhere in the header are an error (the
// reference's JSON maps keep the last one silently).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moeq::io {

// The dtypes of the format, in the reference's order (increasing alignment).
enum class DType : uint8_t {
  kBool,
  kF4,
  kF6E2M3,
  kF6E3M2,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kF8E8M0,
  kF8E4M3Fnuz,
  kF8E5M2Fnuz,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kC64,
  kF64,
  kI64,
  kU64,
};

// The name written in headers ("F32", "F8_E4M3", ...).
std::string_view dtype_name(DType dtype);
// Bits per element (4 for F4, 6 for F6_*, 8 for BOOL).
int dtype_bits(DType dtype);
// Parses a header name; nullopt for an unknown one.
std::optional<DType> parse_dtype(std::string_view name);

// The largest header the reader accepts, as in the reference.
inline constexpr uint64_t kMaxHeaderSize = 100'000'000;

struct TensorEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;  // each dimension fits int64_t
  uint64_t begin = 0;          // byte offsets into the data region, [begin, end)
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
  uint64_t numel() const;
};

struct SafetensorsHeader {
  uint64_t header_size = 0;          // N
  uint64_t data_size = 0;            // bytes after the header; equals the last tensor's end
  std::vector<TensorEntry> tensors;  // ordered by offset
  std::map<std::string, std::string> metadata;  // "__metadata__"

  // Byte offset of the data region in the file.
  uint64_t data_offset() const { return 8 + header_size; }
  // nullptr when absent.
  const TensorEntry* find(std::string_view name) const;

 private:
  friend SafetensorsHeader parse_header(std::string_view, uint64_t, std::string_view);
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors
};

// Reads N from the first bytes of a file of file_size bytes (first_bytes holds
// min(8, file_size) of them) and checks it: at most kMaxHeaderSize and inside the file.
uint64_t parse_header_length(std::string_view first_bytes,
                             uint64_t file_size,
                             std::string_view file);

// Parses and validates the JSON header of a file whose total size is file_size. Every failure
// is a moeq::Error naming the file (and the tensor and values where there is one).
SafetensorsHeader parse_header(std::string_view json, uint64_t file_size, std::string_view file);

// Both steps over a file held whole in memory (tests, the fuzz target).
SafetensorsHeader parse_safetensors(std::string_view file_bytes, std::string_view file);

}  // namespace moeq::io
