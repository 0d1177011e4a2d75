// CheckpointMapping: maps a checkpoint's tensor names onto what a model or adapter expects (for
// checkpoints whose names differ from the Hugging Face layout). Minimal for now; checkpoint I/O
// (core/io) extends it.
#pragma once

#include <boost/config.hpp>

#include <functional>
#include <memory>
#include <string>

namespace moeq {

class BOOST_SYMBOL_VISIBLE CheckpointMapping {
 public:
  virtual ~CheckpointMapping();

  virtual std::string key() const = 0;
  virtual std::string describe() const = 0;
};

using CheckpointMappingFactory = std::function<std::unique_ptr<CheckpointMapping>()>;

}  // namespace moeq
