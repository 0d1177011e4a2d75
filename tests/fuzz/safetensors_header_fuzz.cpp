// libFuzzer target: arbitrary bytes as a whole safetensors file. The parser must either reject
// them with a moeq::Error or return a header that keeps every promise the tensor layer relies
// on; anything else (a crash, a sanitizer report, an internal error, another exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "moeq/core/error.h"
#include "moeq/io/safetensors_header.h"

namespace {

void check(bool condition) {
  if (!condition) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const moeq::io::SafetensorsHeader header = moeq::io::parse_safetensors(bytes, "fuzz");
    check(header.data_offset() + header.data_size == size);
    uint64_t covered = 0;
    for (const moeq::io::TensorEntry& entry : header.tensors) {
      check(entry.begin == covered && entry.begin <= entry.end && entry.end <= header.data_size);
      check(entry.numel() * static_cast<uint64_t>(moeq::io::dtype_bits(entry.dtype)) ==
            entry.nbytes() * 8);
      check(header.find(entry.name) == &entry);
      covered = entry.end;
    }
    check(covered == header.data_size);
  } catch (const moeq::InternalError&) {
    __builtin_trap();
  } catch (const moeq::Error&) {
    // a rejected file: what the parser is for
  }
  return 0;
}
