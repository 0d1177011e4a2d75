// Next-token metrics (eval_metrics.h).
#include "eval_metrics.h"

#include <ATen/ATen.h>

#include <cmath>

namespace moeq::pipeline::detail {
namespace {

double sorted_quantile(const at::Tensor& sorted, double q) {
  const auto n = sorted.numel();
  if (n == 0) {
    return 0.0;
  }
  const auto i =
      std::min<int64_t>(n - 1, static_cast<int64_t>(q * static_cast<double>(n - 1) + 0.5));
  return sorted[i].item<double>();
}

// Cross-entropy of next-token predictions: logits [N, S, V], ids [N, S]; sums nats and counts.
std::pair<double, int64_t> next_token_nll(const at::Tensor& logits, const at::Tensor& ids) {
  if (logits.size(1) < 2) {
    return {0.0, 0};
  }
  const auto v = logits.size(-1);
  auto pred = logits.narrow(1, 0, logits.size(1) - 1).reshape({-1, v}).to(at::kFloat);
  auto target = ids.narrow(1, 1, ids.size(1) - 1).reshape(-1).to(pred.device(), at::kLong);
  auto nll = at::cross_entropy_loss(pred, target, /*weight=*/{}, at::Reduction::Sum);
  return {nll.item<double>(), target.numel()};
}

}  // namespace

void LogitsComparison::add(const at::Tensor& reference_logits,
                           const at::Tensor& quantized_logits,
                           const at::Tensor& ids) {
  const auto ref = reference_logits.to(at::kFloat);
  const auto quant = quantized_logits.to(at::kFloat);
  kls_.push_back(kl_divergence(ref, quant).reshape(-1).to(at::kCPU, at::kDouble));
  const auto [r, n] = next_token_nll(ref, ids);
  const auto [q, n2] = next_token_nll(quant, ids);
  nll_reference_ += r;
  nll_quantized_ += q;
  predictions_ += n;
  agree_ += (ref.argmax(-1) == quant.argmax(-1)).sum().item<int64_t>();
  tokens_ += ids.numel();
  if (keep_logits_) {
    kept_reference_.push_back(ref.to(at::kCPU));
    kept_quantized_.push_back(quant.to(at::kCPU));
  }
}

EvalResult LogitsComparison::finish() {
  EvalResult ev;
  ev.tokens = tokens_;
  if (kls_.empty()) {
    return ev;
  }
  const auto all = std::get<0>(at::sort(at::cat(kls_)));
  ev.kl_mean = all.mean().item<double>();
  ev.kl_p50 = sorted_quantile(all, 0.50);
  ev.kl_p90 = sorted_quantile(all, 0.90);
  ev.kl_p99 = sorted_quantile(all, 0.99);
  ev.kl_max = all.numel() > 0 ? all[-1].item<double>() : 0.0;
  const auto count = static_cast<double>(predictions_);
  ev.ppl_reference = predictions_ > 0 ? std::exp(nll_reference_ / count) : 0.0;
  ev.ppl_quantized = predictions_ > 0 ? std::exp(nll_quantized_ / count) : 0.0;
  ev.top1_agreement =
      tokens_ > 0 ? static_cast<double>(agree_) / static_cast<double>(tokens_) : 0.0;
  if (keep_logits_) {
    ev.logits_reference = at::cat(kept_reference_);
    ev.logits_quantized = at::cat(kept_quantized_);
  }
  return ev;
}

std::string_view projection_kind_name(fn::ProjKind kind) {
  switch (kind) {
    case fn::ProjKind::kQ:
      return "q";
    case fn::ProjKind::kK:
      return "k";
    case fn::ProjKind::kV:
      return "v";
    case fn::ProjKind::kO:
      return "o";
    case fn::ProjKind::kGate:
      return "gate";
    case fn::ProjKind::kUp:
      return "up";
    case fn::ProjKind::kDown:
      return "down";
    case fn::ProjKind::kGateUp:
      return "gate_up";
    case fn::ProjKind::kRouter:
      return "router";
    case fn::ProjKind::kSharedExpertGate:
      return "shared_expert_gate";
    case fn::ProjKind::kHead:
      return "head";
    case fn::ProjKind::kOther:
      break;
  }
  return "other";
}

double relative_rms(const at::Tensor& approx, const at::Tensor& exact) {
  const double denom = exact.to(at::kDouble).norm().item<double>();
  const double num = (approx.to(at::kDouble) - exact.to(at::kDouble)).norm().item<double>();
  return denom > 0.0 ? num / denom : num;
}

}  // namespace moeq::pipeline::detail
