// SourceFormatHandler: reads a source checkpoint format that must be dequantized before
// calibration (FP8 block-128 with weight_scale_inv, MXFP4 blocks ...), keyed by the format's name.
// Minimal for now; the hard tier's pipeline extends it.
#pragma once

#include <boost/config.hpp>

#include <functional>
#include <memory>
#include <string>

namespace moeq {

class BOOST_SYMBOL_VISIBLE SourceFormatHandler {
 public:
  virtual ~SourceFormatHandler();

  virtual std::string key() const = 0;
  virtual std::string describe() const = 0;
};

using SourceFormatFactory = std::function<std::unique_ptr<SourceFormatHandler>()>;

}  // namespace moeq
