// The safetensors header parser. No libtorch here: the fuzz target compiles this file alone.
#include "moeq/io/safetensors_header.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "moeq/core/error.h"

namespace moeq::io {

namespace {

using Json = nlohmann::json;

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  int bits;
};

constexpr std::array<DTypeInfo, 22> kDTypes = {{
    {DType::kBool, "BOOL", 8},
    {DType::kF4, "F4", 4},
    {DType::kF6E2M3, "F6_E2M3", 6},
    {DType::kF6E3M2, "F6_E3M2", 6},
    {DType::kU8, "U8", 8},
    {DType::kI8, "I8", 8},
    {DType::kF8E5M2, "F8_E5M2", 8},
    {DType::kF8E4M3, "F8_E4M3", 8},
    {DType::kF8E8M0, "F8_E8M0", 8},
    {DType::kF8E4M3Fnuz, "F8_E4M3FNUZ", 8},
    {DType::kF8E5M2Fnuz, "F8_E5M2FNUZ", 8},
    {DType::kI16, "I16", 16},
    {DType::kU16, "U16", 16},
    {DType::kF16, "F16", 16},
    {DType::kBF16, "BF16", 16},
    {DType::kI32, "I32", 32},
    {DType::kU32, "U32", 32},
    {DType::kF32, "F32", 32},
    {DType::kC64, "C64", 64},
    {DType::kF64, "F64", 64},
    {DType::kI64, "I64", 64},
    {DType::kU64, "U64", 64},
}};

const DTypeInfo& info(DType dtype) {
  const auto index = static_cast<size_t>(dtype);
  MOEQ_INTERNAL_ASSERT(index < kDTypes.size() && kDTypes[index].dtype == dtype,
                       "dtype table out of order at {}", index);
  return kDTypes[index];
}

// Names and values from a file go into messages; a hostile file must not make them huge.
std::string clip(std::string_view text, size_t limit = 120) {
  if (text.size() <= limit) {
    return std::string(text);
  }
  return fmt::format("{}... ({} bytes)", text.substr(0, limit), text.size());
}

std::string show(const Json& value) {
  return clip(value.dump(-1, ' ', false, Json::error_handler_t::replace));
}

// Duplicate keys are an error at every depth; nlohmann's objects would keep the last one.
class DuplicateKeyCheck {
 public:
  explicit DuplicateKeyCheck(std::string_view file) : file_(file) {}

  bool operator()(int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        frames_.push_back({{}, frames_.empty() ? std::string() : frames_.back().last_key});
        break;
      case Json::parse_event_t::object_end:
        frames_.pop_back();
        break;
      case Json::parse_event_t::key: {
        Frame& frame = frames_.back();
        auto key = parsed.get<std::string>();
        if (!frame.keys.insert(key).second) {
          if (depth == 1) {
            MOEQ_FAIL("safetensors '{}': tensor name '{}' appears twice in the header", file_,
                      clip(key));
          }
          MOEQ_FAIL("safetensors '{}': key '{}' appears twice in the entry of '{}'", file_,
                    clip(key), clip(frame.name));
        }
        frame.last_key = std::move(key);
        break;
      }
      default:
        break;
    }
    return true;
  }

 private:
  struct Frame {
    std::set<std::string> keys;
    std::string name;  // the key this object is the value of
    std::string last_key;
  };
  std::string_view file_;
  std::vector<Frame> frames_;
};

// A non-negative integer that fits the bound, or nullopt.
std::optional<uint64_t> as_unsigned(const Json& value, uint64_t bound) {
  if (!value.is_number_unsigned()) {
    return std::nullopt;  // negative, fractional, too large for u64, or not a number at all
  }
  const auto result = value.get<uint64_t>();
  return result <= bound ? std::optional<uint64_t>(result) : std::nullopt;
}

TensorEntry parse_entry(const std::string& name,
                        const Json& entry,
                        uint64_t data_size,
                        std::string_view file) {
  const std::string where = fmt::format("safetensors '{}': tensor '{}'", file, clip(name));
  MOEQ_CHECK(entry.is_object(), "{}: the entry is {} {}, expected an object", where,
             entry.type_name(), show(entry));
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    MOEQ_CHECK(entry.contains(field), "{}: the entry has no '{}' (entry: {})", where, field,
               show(entry));
  }

  TensorEntry result;
  result.name = name;

  const Json& dtype = entry["dtype"];
  MOEQ_CHECK(dtype.is_string(), "{}: dtype is {} {}, expected a string", where, dtype.type_name(),
             show(dtype));
  const auto parsed_dtype = parse_dtype(dtype.get_ref<const std::string&>());
  MOEQ_CHECK(parsed_dtype.has_value(), "{}: unknown dtype {}", where, show(dtype));
  result.dtype = *parsed_dtype;

  const Json& shape = entry["shape"];
  MOEQ_CHECK(shape.is_array(), "{}: shape is {} {}, expected an array of non-negative integers",
             where, shape.type_name(), show(shape));
  result.shape.reserve(shape.size());
  for (const Json& dim : shape) {
    const auto value = as_unsigned(dim, std::numeric_limits<int64_t>::max());
    MOEQ_CHECK(value.has_value(), "{}: shape {} has dimension {}, expected an integer in [0, 2^63)",
               where, show(shape), show(dim));
    result.shape.push_back(static_cast<int64_t>(*value));
  }

  const Json& offsets = entry["data_offsets"];
  std::optional<uint64_t> begin;
  std::optional<uint64_t> end;
  if (offsets.is_array() && offsets.size() == 2) {
    begin = as_unsigned(offsets[0], std::numeric_limits<uint64_t>::max());
    end = as_unsigned(offsets[1], std::numeric_limits<uint64_t>::max());
  }
  MOEQ_CHECK(begin && end, "{}: data_offsets is {}, expected [begin, end] of non-negative integers",
             where, show(offsets));
  MOEQ_CHECK(*begin <= *end, "{}: data_offsets [{}, {}] have begin after end", where, *begin, *end);
  MOEQ_CHECK(*end <= data_size, "{}: data_offsets [{}, {}] lie outside the data region of {} bytes",
             where, *begin, *end, data_size);
  result.begin = *begin;
  result.end = *end;

  // Size: dtype bits x product(shape) / 8, every step overflow-checked.
  uint64_t numel = 1;
  for (int64_t dim : result.shape) {
    MOEQ_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(dim), &numel),
               "{}: shape [{}] has more elements than fit in 64 bits", where,
               fmt::join(result.shape, ", "));
  }
  const auto bits = static_cast<uint64_t>(dtype_bits(result.dtype));
  uint64_t total_bits = 0;
  MOEQ_CHECK(!__builtin_mul_overflow(numel, bits, &total_bits),
             "{}: {} elements of {} overflow 64 bits", where, numel, dtype_name(result.dtype));
  MOEQ_CHECK(total_bits % 8 == 0, "{}: {} elements of {} ({} bits each) do not fill whole bytes",
             where, numel, dtype_name(result.dtype), bits);
  MOEQ_CHECK(total_bits / 8 == result.nbytes(),
             "{}: dtype {} and shape [{}] need {} bytes, but data_offsets [{}, {}] hold {}", where,
             dtype_name(result.dtype), fmt::join(result.shape, ", "), total_bits / 8, *begin, *end,
             result.nbytes());
  return result;
}

}  // namespace

std::string_view dtype_name(DType dtype) {
  return info(dtype).name;
}

int dtype_bits(DType dtype) {
  return info(dtype).bits;
}

std::optional<DType> parse_dtype(std::string_view name) {
  for (const DTypeInfo& entry : kDTypes) {
    if (entry.name == name) {
      return entry.dtype;
    }
  }
  return std::nullopt;
}

uint64_t TensorEntry::numel() const {
  uint64_t result = 1;
  for (int64_t dim : shape) {
    result *= static_cast<uint64_t>(dim);  // validated by parse_header not to overflow
  }
  return result;
}

const TensorEntry* SafetensorsHeader::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors[it->second];
}

uint64_t parse_header_length(std::string_view first_bytes,
                             uint64_t file_size,
                             std::string_view file) {
  MOEQ_CHECK(file_size >= 8,
             "safetensors '{}': the file has {} bytes, too few for the 8-byte header length", file,
             file_size);
  MOEQ_INTERNAL_ASSERT(first_bytes.size() >= 8);
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) {
    length = (length << 8) | static_cast<uint8_t>(first_bytes[static_cast<size_t>(i)]);
  }
  MOEQ_CHECK(length <= kMaxHeaderSize,
             "safetensors '{}': header length {} exceeds the limit of {} bytes", file, length,
             kMaxHeaderSize);
  MOEQ_CHECK(length <= file_size - 8,
             "safetensors '{}': header length {} runs past the end of the file ({} bytes after "
             "the length field); the file is truncated or not safetensors",
             file, length, file_size - 8);
  return length;
}

SafetensorsHeader parse_header(std::string_view json, uint64_t file_size, std::string_view file) {
  MOEQ_INTERNAL_ASSERT(json.size() <= file_size - 8, "header of {} bytes in a file of {}",
                       json.size(), file_size);
  SafetensorsHeader header;
  header.header_size = json.size();
  header.data_size = file_size - 8 - json.size();

  Json root;
  try {
    root = Json::parse(json.begin(), json.end(), DuplicateKeyCheck(file));
  } catch (const Json::exception& e) {
    MOEQ_FAIL("safetensors '{}': the header is not valid JSON: {}", file, clip(e.what(), 300));
  }
  MOEQ_CHECK(root.is_object(), "safetensors '{}': the header is {} {}, expected a JSON object",
             file, root.type_name(), show(root));

  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) {
        continue;  // the reference reads null as absent
      }
      MOEQ_CHECK(value.is_object(), "safetensors '{}': __metadata__ is {} {}, expected an object",
                 file, value.type_name(), show(value));
      for (const auto& [meta_key, meta_value] : value.items()) {
        MOEQ_CHECK(meta_value.is_string(),
                   "safetensors '{}': __metadata__ key '{}' is {} {}, expected a string", file,
                   clip(meta_key), meta_value.type_name(), show(meta_value));
        header.metadata.emplace(meta_key, meta_value.get<std::string>());
      }
      continue;
    }
    header.tensors.push_back(parse_entry(key, value, header.data_size, file));
  }

  // Ordered by offset, the tensors must tile the data region exactly.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorEntry& a, const TensorEntry& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  uint64_t covered = 0;
  const TensorEntry* previous = nullptr;
  for (const TensorEntry& entry : header.tensors) {
    MOEQ_CHECK(entry.begin <= covered,
               "safetensors '{}': tensor '{}' starts at data offset {} but the previous tensor{} "
               "ends at {}: a gap of {} bytes",
               file, clip(entry.name), entry.begin,
               previous ? fmt::format(" '{}'", clip(previous->name)) : std::string(), covered,
               entry.begin - covered);
    MOEQ_CHECK(entry.begin == covered,
               "safetensors '{}': tensor '{}' (data_offsets [{}, {}]) overlaps tensor '{}', which "
               "ends at {}",
               file, clip(entry.name), entry.begin, entry.end, clip(previous->name), covered);
    covered = entry.end;
    previous = &entry;
  }
  MOEQ_CHECK(covered == header.data_size,
             "safetensors '{}': the tensors cover {} bytes of the data region but it holds {} "
             "({} bytes after the last tensor)",
             file, covered, header.data_size, header.data_size - covered);

  for (size_t i = 0; i < header.tensors.size(); ++i) {
    header.index_.emplace(header.tensors[i].name, i);
  }
  return header;
}

SafetensorsHeader parse_safetensors(std::string_view file_bytes, std::string_view file) {
  const uint64_t length = parse_header_length(file_bytes, file_bytes.size(), file);
  return parse_header(file_bytes.substr(8, length), file_bytes.size(), file);
}

}  // namespace moeq::io
