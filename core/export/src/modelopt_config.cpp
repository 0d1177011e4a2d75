#include "modelopt_config.h"

#include <moeq/core/error.h>

#include <algorithm>
#include <set>

namespace moeq::exporting {

using nlohmann::ordered_json;

const char* const kModelOptVersion = "0.47.0";

namespace {

// all_matching_prefix_wildcards: the name and every "<prefix>*".
void add_prefix_wildcards(const std::string& name, std::set<std::string>& out) {
  out.insert(name);
  for (size_t i = 0; i <= name.size(); ++i) {
    out.insert(name.substr(0, i) + "*");
  }
}

// next_formatted_matching_prefix_wildcards: at each dot "<prefix>*", then {"<prefix>",
// "<prefix>.*"}; finally the name itself.
std::vector<std::vector<std::string>> formatted_wildcards(const std::string& name) {
  std::vector<std::vector<std::string>> out;
  for (size_t i = 0; i < name.size(); ++i) {
    if (name[i] == '.') {
      const std::string prefix = name.substr(0, i);
      out.push_back({prefix + "*"});
      out.push_back({prefix, prefix + ".*"});
    }
  }
  out.push_back({name});
  return out;
}

}  // namespace

std::vector<std::string> summarize_exclude_modules(const std::vector<std::string>& unquantized,
                                                   const std::vector<std::string>& quantized) {
  std::set<std::string> negative;
  for (const auto& layer : quantized) {
    add_prefix_wildcards(layer, negative);
  }
  std::set<std::string> summary;
  for (const auto& layer : unquantized) {
    std::vector<std::string> candidate;
    for (const auto& wildcards : formatted_wildcards(layer)) {
      if (std::any_of(wildcards.begin(), wildcards.end(),
                      [&](const std::string& w) { return negative.contains(w); })) {
        continue;  // would match a quantized layer: needs a more specific wildcard
      }
      if (std::all_of(wildcards.begin(), wildcards.end(),
                      [&](const std::string& w) { return summary.contains(w); })) {
        candidate.clear();  // covered already
        break;
      }
      candidate = wildcards;
      break;
    }
    // The pair {prefix, prefix.*} is written as prefix.* alone, for deployment.
    if (candidate.size() == 2 && candidate[1] == candidate[0] + ".*") {
      summary.insert(candidate[1]);
    } else {
      summary.insert(candidate.begin(), candidate.end());
    }
  }
  return {summary.begin(), summary.end()};
}

ordered_json modelopt_hf_quant_config(quant::ModelOptAlgo algo,
                                      int64_t group_size,
                                      const std::vector<std::string>& exclude_modules) {
  // process_layer_quant_config's per-layer entry for the format, merged over
  // {"quant_algo": None, "kv_cache_quant_algo": None}.
  ordered_json quantization = {{"quant_algo", std::string(quant::to_string(algo))},
                               {"kv_cache_quant_algo", nullptr}};
  switch (algo) {
    case quant::ModelOptAlgo::kFp8:
      break;
    case quant::ModelOptAlgo::kNvfp4:
    case quant::ModelOptAlgo::kW4A16Nvfp4:
      quantization["group_size"] = group_size;
      break;
    case quant::ModelOptAlgo::kW4A16Awq:
      quantization["group_size"] = group_size;
      quantization["has_zero_point"] = false;
      quantization["pre_quant_scale"] = true;
      break;
  }
  quantization["exclude_modules"] = exclude_modules;
  return ordered_json{{"producer", {{"name", "modelopt"}, {"version", kModelOptVersion}}},
                      {"quantization", quantization}};
}

ordered_json modelopt_quantization_config(const ordered_json& hf_quant_config) {
  const ordered_json& details = hf_quant_config.at("quantization");
  const std::string algo = details.at("quant_algo").get<std::string>();
  ordered_json out = ordered_json::object();
  const auto gs = [&](int64_t fallback) {
    return details.contains("group_size") ? details.at("group_size").get<int64_t>() : fallback;
  };
  if (algo == "FP8") {
    out["config_groups"] = {
        {"group_0",
         {{"input_activations", {{"dynamic", false}, {"num_bits", 8}, {"type", "float"}}},
          {"weights", {{"dynamic", false}, {"num_bits", 8}, {"type", "float"}}},
          {"targets", {"Linear"}}}}};
  } else if (algo == "NVFP4") {
    const int64_t g = gs(16);
    out["config_groups"] = {
        {"group_0",
         {{"input_activations",
           {{"dynamic", false}, {"num_bits", 4}, {"type", "float"}, {"group_size", g}}},
          {"weights", {{"dynamic", false}, {"num_bits", 4}, {"type", "float"}, {"group_size", g}}},
          {"targets", {"Linear"}}}}};
  } else if (algo == "W4A16_NVFP4") {
    const int64_t g = gs(16);
    out["config_groups"] = {
        {"group_0",
         {{"weights", {{"dynamic", false}, {"num_bits", 4}, {"type", "float"}, {"group_size", g}}},
          {"targets", {"Linear"}}}}};
  }
  // Other algorithms (W4A16_AWQ among them) get no config_groups from ModelOpt either.
  out["ignore"] = details.contains("exclude_modules") && !details.at("exclude_modules").is_null()
                      ? details.at("exclude_modules")
                      : ordered_json::array();
  out["quant_algo"] = algo;
  if (details.contains("kv_cache_quant_algo") && !details.at("kv_cache_quant_algo").is_null()) {
    out["kv_cache_scheme"] = details.at("kv_cache_quant_algo");
  }
  out["producer"] = hf_quant_config.at("producer");
  out["quant_method"] = "modelopt";
  return out;
}

}  // namespace moeq::exporting
