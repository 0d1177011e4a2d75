// Expert choices on the evaluation tokens: recorded from a layer's MoE blocks while its forwards
// run, and compared between the original model and the quantized one (RoutingResult). The
// pipeline's evaluation streams and moeq eval share them.
#pragma once

#include <moeq/pipeline/pipeline.h>
#include <moeq/runtime/blocks.h>

#include <memory>
#include <string>
#include <vector>

namespace moeq::pipeline::detail {

// The routing of every MoE block in one layer, for the forwards run while a Recording lives;
// batches are appended in the order they ran.
class RoutingCapture {
 public:
  struct Block {
    std::string name;
    int64_t num_experts = 0;
    int64_t top_k = 0;
    std::vector<Routes> batches;
    Routes cat() const;  // the batches as one [tokens, k] pair
  };

  // Finds the layer's blocks; records nothing until record() is called.
  explicit RoutingCapture(runtime::Module& layer);
  RoutingCapture(const RoutingCapture&) = delete;
  RoutingCapture& operator=(const RoutingCapture&) = delete;

  // Attached to the blocks for its lifetime (one capture records at a time: the original and the
  // quantized forwards of a layer run through the same blocks in the pipeline).
  class Recording {
   public:
    explicit Recording(RoutingCapture& capture);
    ~Recording();
    Recording(const Recording&) = delete;
    Recording& operator=(const Recording&) = delete;

   private:
    RoutingCapture& capture_;
  };
  [[nodiscard]] Recording record() { return Recording(*this); }

  const std::vector<Block>& blocks() const { return blocks_; }

 private:
  class Hook;
  std::vector<runtime::SparseMoeBlock*> modules_;
  std::vector<std::shared_ptr<Hook>> hooks_;
  std::vector<Block> blocks_;
};

// The per-block comparison of the quantized side's choices (own: on the original's inputs to the
// layer; carried: on its own stream) with the original's; `keep` keeps the choices themselves.
std::vector<RoutingResult> compare_routing(const RoutingCapture& reference,
                                           const RoutingCapture& own,
                                           const RoutingCapture& carried,
                                           bool keep);

// One side against the original: the agreement counts (pipeline.h, RoutingAgreement). The highest-
// weight expert of a token is its top-k id with the largest combine weight (the first on a tie).
RoutingAgreement routing_agreement(const Routes& reference,
                                   const Routes& quantized,
                                   int64_t num_experts);

}  // namespace moeq::pipeline::detail
