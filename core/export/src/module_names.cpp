#include "module_names.h"

#include <regex>

namespace moeq::exporting {
namespace {

std::string leaf_of(const std::string& module) {
  const auto dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
}

std::string parent_of(const std::string& module) {
  const auto dot = module.rfind('.');
  return dot == std::string::npos ? std::string() : module.substr(0, dot);
}

}  // namespace

Projection projection_of(const std::string& module) {
  const std::string leaf = leaf_of(module);
  if (leaf == "gate_proj" || leaf == "w1")
    return Projection::kGate;
  if (leaf == "up_proj" || leaf == "w3")
    return Projection::kUp;
  if (leaf == "down_proj" || leaf == "w2")
    return Projection::kDown;
  if (leaf == "q_proj")
    return Projection::kQuery;
  if (leaf == "k_proj")
    return Projection::kKey;
  if (leaf == "v_proj")
    return Projection::kValue;
  return Projection::kOther;
}

std::string fusion_key(const std::string& module) {
  switch (projection_of(module)) {
    case Projection::kGate:
    case Projection::kUp:
      return parent_of(module) + "#gate_up";
    case Projection::kQuery:
    case Projection::kKey:
    case Projection::kValue:
      return parent_of(module) + "#qkv";
    default:
      return {};
  }
}

std::string expert_pattern(const std::string& module) {
  static const std::regex kExpert(R"((^|\.)experts\.(\d+)\.)");
  std::smatch m;
  if (!std::regex_search(module, m, kExpert)) {
    return {};
  }
  const auto index = m.position(2);
  return module.substr(0, index) + "*" + module.substr(index + m.length(2));
}

}  // namespace moeq::exporting
