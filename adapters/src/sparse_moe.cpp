// The easy tier's adapter (sparse_moe.h). Calibration routing is a MoeHook on the block: it
// counts the routing decisions and replaces the experts' computation by the mode's pass, whose
// output is always the routed one (what inference computes), so the next layer's inputs are the
// real ones whatever the experts saw.
#include "moeq/adapters/sparse_moe.h"

#include <moeq/core/error.h>
#include <moeq/pipeline/layer_session.h>
#include <moeq/runtime/blocks.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace moeq::adapters {
namespace {

using runtime::RouterOutput;
using runtime::SparseMoeBlock;

// How many experts each token visits in ratio mode: ceil(ratio * E), at least top_k, at most E.
int64_t experts_per_token(double ratio, int64_t num_experts, int64_t top_k) {
  const auto m = static_cast<int64_t>(std::ceil(ratio * static_cast<double>(num_experts) - 1e-9));
  return std::clamp<int64_t>(m, top_k, num_experts);
}

class CalibrationRouting final : public runtime::MoeHook {
 public:
  CalibrationRouting(pipeline::CalibrationOptions options, pipeline::ExpertCoverage& coverage)
      : options_(options), coverage_(coverage) {}

  void on_route(SparseMoeBlock& block, const at::Tensor& x, const RouterOutput& routing) override {
    const auto num_experts = block.experts().num_experts();
    auto counts = at::bincount(routing.topk_ids.reshape(-1), /*weights=*/{}, num_experts)
                      .to(at::kCPU, at::kLong);
    const auto* c = counts.data_ptr<int64_t>();
    const auto tokens = x.size(0);
    coverage_.tokens += tokens;
    for (int64_t e = 0; e < num_experts; ++e) {
      coverage_.routed[e] += c[e];
    }
    switch (options_.mode) {
      case CalibrationMode::kAll:
        for (int64_t e = 0; e < num_experts; ++e) {
          coverage_.seen[e] += tokens;
        }
        break;
      case CalibrationMode::kRouted:
        for (int64_t e = 0; e < num_experts; ++e) {
          coverage_.seen[e] += c[e];
        }
        break;
      case CalibrationMode::kRatio:
        break;  // counted in combine(), where the visiting sets are computed
    }
  }

  std::optional<at::Tensor> combine(SparseMoeBlock& block,
                                    const at::Tensor& x,
                                    const RouterOutput& routing) override {
    switch (options_.mode) {
      case CalibrationMode::kAll:
        return block.combine_all_experts(x, routing);
      case CalibrationMode::kRouted:
        // The per-expert loop, even for experts that run batched over every token (Llama 4):
        // observers then see exactly the routed rows, not the zero rows of unpicked experts.
        return block.combine_routed(x, routing);
      case CalibrationMode::kRatio:
        return combine_ratio(block, x, routing);
    }
    return std::nullopt;
  }

 private:
  // Each token visits its m most probable experts; expert e runs once on all of its visitors,
  // and the rows of tokens that routed to e are weighted into the output as in the routed loop.
  at::Tensor combine_ratio(SparseMoeBlock& block,
                           const at::Tensor& x,
                           const RouterOutput& routing) {
    auto& experts = block.experts();
    const auto num_experts = experts.num_experts();
    const auto top_k = routing.topk_ids.size(1);
    const auto m = experts_per_token(options_.ratio, num_experts, top_k);
    // Ties broken by the router's own top-k first: visitors always include the routed experts.
    auto probs = routing.probs.clone();
    probs.scatter_(1, routing.topk_ids, std::numeric_limits<float>::infinity());
    auto visit_ids = std::get<1>(at::topk(probs, m, /*dim=*/1));  // [T, m]
    auto visits = at::zeros({x.size(0), num_experts}, routing.topk_ids.options().dtype(at::kBool));
    visits.scatter_(1, visit_ids, true);
    // Routed weight of (token, expert), zero where the token did not pick the expert.
    auto weights = at::zeros({x.size(0), num_experts}, routing.topk_weights.options());
    weights.scatter_(1, routing.topk_ids, routing.topk_weights);
    auto out = at::zeros_like(x);
    for (int64_t e = 0; e < num_experts; ++e) {
      auto rows = visits.select(1, e).nonzero().squeeze(1);
      coverage_.seen[e] += rows.size(0);
      if (rows.size(0) == 0) {
        continue;
      }
      auto w = weights.select(1, e).index_select(0, rows).unsqueeze(1);
      if (block.router_weight_on_input()) {
        // The input carries the weight the token would get from e (its probability); only the
        // tokens that picked e contribute, unweighted.
        auto p = routing.probs.select(1, e).index_select(0, rows).unsqueeze(1);
        auto y = experts.run_expert(
            e, (x.index_select(0, rows) * p.to(w.scalar_type())).to(x.scalar_type()));
        out.index_add_(0, rows, (y * w.ne(0)).to(out.scalar_type()));
      } else {
        auto y = experts.run_expert(e, x.index_select(0, rows));
        out.index_add_(0, rows, (y * w).to(out.scalar_type()));
      }
    }
    return out;
  }

  pipeline::CalibrationOptions options_;
  pipeline::ExpertCoverage& coverage_;
};

}  // namespace

SparseMoeAdapter::SparseMoeAdapter(std::string type_key) : type_key_(std::move(type_key)) {}

std::string SparseMoeAdapter::describe() const {
  return fmt::format(
      "sparse MoE block (router + per-expert MLPs): all-expert calibration, "
      "routed output");
}

void SparseMoeAdapter::attach(runtime::Module& module, pipeline::LayerSession& session) {
  auto* block = dynamic_cast<SparseMoeBlock*>(&module);
  MOEQ_CHECK(block != nullptr,
             "adapter '{}' (easy tier) needs a sparse MoE block (router + per-expert MLPs), but "
             "module '{}' of type '{}' is not one",
             type_key_, module.name(), module.type());
  const auto& options = session.calibration();
  MOEQ_CHECK(
      options.mode != CalibrationMode::kRatio || (options.ratio > 0.0 && options.ratio <= 1.0),
      "calibration ratio {} for '{}' is outside (0, 1]", options.ratio, module.name());
  auto& coverage = session.add_coverage(module.name(), type_key_, block->experts().num_experts());
  auto hook = std::make_shared<CalibrationRouting>(options, coverage);
  block->add_hook(hook);
  session.on_detach([block, raw = hook.get()] { block->remove_hook(raw); });
}

ModuleAdapterFactory sparse_moe_adapter_factory(std::string type_key) {
  return [key = std::move(type_key)] { return std::make_unique<SparseMoeAdapter>(key); };
}

}  // namespace moeq::adapters
