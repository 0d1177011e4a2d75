// Expert choices on the evaluation tokens (routing_metrics.h).
#include "routing_metrics.h"

#include <moeq/core/error.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

namespace moeq::pipeline::detail {

class RoutingCapture::Hook final : public runtime::MoeHook {
 public:
  explicit Hook(Block& block) : block_(block) {}
  void on_route(runtime::SparseMoeBlock& block,
                const at::Tensor& x,
                const runtime::RouterOutput& routing) override {
    // On the host at once: a device layer's memory is not held for the whole evaluation.
    block_.batches.push_back(
        {routing.topk_ids.to(at::kCPU, at::kInt), routing.topk_weights.to(at::kCPU, at::kFloat)});
  }

 private:
  Block& block_;
};

Routes RoutingCapture::Block::cat() const {
  MOEQ_INTERNAL_ASSERT(!batches.empty(), "no routing was recorded for '{}'", name);
  std::vector<at::Tensor> ids;
  std::vector<at::Tensor> weights;
  for (const auto& b : batches) {
    ids.push_back(b.topk_ids);
    weights.push_back(b.topk_weights);
  }
  return {at::cat(ids), at::cat(weights)};
}

RoutingCapture::RoutingCapture(runtime::Module& layer) {
  layer.for_each_module([&](runtime::Module& m) {
    if (auto* moe = dynamic_cast<runtime::SparseMoeBlock*>(&m)) {
      modules_.push_back(moe);
    }
  });
  // Blocks are referenced by the hooks: reserve so they never move.
  blocks_.reserve(modules_.size());
  for (auto* moe : modules_) {
    blocks_.push_back({moe->name(), moe->router().num_experts(), moe->router().top_k(), {}});
    hooks_.push_back(std::make_shared<Hook>(blocks_.back()));
  }
}

RoutingCapture::Recording::Recording(RoutingCapture& capture) : capture_(capture) {
  for (size_t i = 0; i < capture_.modules_.size(); ++i) {
    capture_.modules_[i]->add_hook(capture_.hooks_[i]);
  }
}

RoutingCapture::Recording::~Recording() {
  for (size_t i = 0; i < capture_.modules_.size(); ++i) {
    capture_.modules_[i]->remove_hook(capture_.hooks_[i].get());
  }
}

namespace {

std::vector<int64_t> expert_tokens(const at::Tensor& ids, int64_t num_experts) {
  const auto flat = ids.reshape(-1).to(at::kLong);
  MOEQ_INTERNAL_ASSERT(flat.numel() == 0 || (flat.min().item<int64_t>() >= 0 &&
                                             flat.max().item<int64_t>() < num_experts),
                       "top-k ids outside [0, {})", num_experts);
  const auto counts = at::bincount(flat, /*weights=*/{}, num_experts);
  return {counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + num_experts};
}

}  // namespace

RoutingAgreement routing_agreement(const Routes& reference,
                                   const Routes& quantized,
                                   int64_t num_experts) {
  const auto& a = reference.topk_ids;
  const auto& b = quantized.topk_ids;
  MOEQ_INTERNAL_ASSERT(a.dim() == 2 && a.sizes() == b.sizes(),
                       "routing of [{}] tokens compared with [{}]", fmt::join(a.sizes(), ", "),
                       fmt::join(b.sizes(), ", "));
  const auto k = a.size(1);
  RoutingAgreement out;
  // A top-k row holds distinct ids, so the matches of a row's ids in the other row count |A ∩ B|.
  const auto overlap = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).sum(1);
  out.overlap = overlap.sum().item<int64_t>();
  out.same_set = (overlap == k).sum().item<int64_t>();
  const auto top1 = [](const Routes& r) {
    return r.topk_ids.gather(1, r.topk_weights.argmax(1, /*keepdim=*/true));
  };
  out.top1_changed = (top1(reference) != top1(quantized)).sum().item<int64_t>();
  out.expert_tokens = expert_tokens(b, num_experts);
  return out;
}

std::vector<RoutingResult> compare_routing(const RoutingCapture& reference,
                                           const RoutingCapture& own,
                                           const RoutingCapture& carried,
                                           bool keep) {
  MOEQ_INTERNAL_ASSERT(reference.blocks().size() == own.blocks().size() &&
                           reference.blocks().size() == carried.blocks().size(),
                       "the original layer has {} MoE blocks, the quantized one {}",
                       reference.blocks().size(), carried.blocks().size());
  std::vector<RoutingResult> results;
  for (size_t i = 0; i < reference.blocks().size(); ++i) {
    const auto& block = reference.blocks()[i];
    RoutingResult r;
    r.block = block.name;
    r.num_experts = block.num_experts;
    auto ref = block.cat();
    auto own_routes = own.blocks()[i].cat();
    auto carried_routes = carried.blocks()[i].cat();
    r.tokens = ref.topk_ids.size(0);
    r.top_k = ref.topk_ids.size(1);
    r.reference_expert_tokens = expert_tokens(ref.topk_ids, r.num_experts);
    r.own = routing_agreement(ref, own_routes, r.num_experts);
    r.carried = routing_agreement(ref, carried_routes, r.num_experts);
    if (keep) {
      r.reference_routes = std::move(ref);
      r.own_routes = std::move(own_routes);
      r.carried_routes = std::move(carried_routes);
    }
    results.push_back(std::move(r));
  }
  return results;
}

}  // namespace moeq::pipeline::detail
